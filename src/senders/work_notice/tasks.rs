//! The work-notification tasks deliveries wait on (table `work_notice_tasks`): written as
//! asyncsend_v2 answers, so a restart or another process polls the same task instead of
//! sending again; removed once getsendresult has decided the delivery.

use crate::db::schema::work_notice_tasks as t;
use crate::db::{DbConn, DbError};
use diesel::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = t)]
pub struct Task {
    pub delivery_id: i64,
    pub agent_id: String,
    pub task_id: String,
    /// The part (0-based) the task carries.
    pub part: i32,
    pub user_id: String,
    pub sent_at: i64,
}

/// The tasks of these deliveries.
pub fn of(conn: &mut DbConn, ids: &[i64]) -> Result<Vec<Task>, DbError> {
    Ok(t::table
        .filter(t::delivery_id.eq_any(ids))
        .select(Task::as_select())
        .load(conn)?)
}

/// Records new tasks, each replacing its delivery's previous one.
pub fn save(conn: &mut DbConn, tasks: &[Task]) -> Result<(), DbError> {
    let ids: Vec<i64> = tasks.iter().map(|t| t.delivery_id).collect();
    crate::db::write_tx(conn, |conn| {
        crate::with_conn!(&mut *conn, |c| diesel::delete(
            t::table.filter(t::delivery_id.eq_any(&ids))
        )
        .execute(c))?;
        crate::with_conn!(&mut *conn, |c| diesel::insert_into(t::table)
            .values(tasks)
            .execute(c))?;
        Ok::<_, DbError>(())
    })
}

/// Forgets the tasks of deliveries getsendresult has decided.
pub fn clear(conn: &mut DbConn, ids: &[i64]) -> Result<(), DbError> {
    crate::with_conn!(conn, |c| diesel::delete(
        t::table.filter(t::delivery_id.eq_any(ids))
    )
    .execute(c))?;
    Ok(())
}
