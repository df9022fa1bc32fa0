//! The typed core: values valid by construction, no I/O. Parse at the edge (a request, an
//! import row, a stored row) and pass the value on; nothing downstream re-validates it.

pub mod mobile;
