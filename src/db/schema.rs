// One schema for both backends; migrations/{sqlite,postgres} keep the column types aligned.

diesel::table! {
    apps (code) {
        code -> Text,
        secret_hash -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    app_tokens (token_hash) {
        token_hash -> Text,
        app_code -> Text,
        created_at -> BigInt,
        last_used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    channels (name) {
        name -> Text,
        path -> Text,
        method -> Text,
        component -> Text,
        label -> Text,
        label_en -> Text,
        timeout_s -> Integer,
        is_active -> Bool,
        is_hidden -> Bool,
        comp_conf -> Text,
        admin_set -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    users (username) {
        username -> Text,
        display_name -> Nullable<Text>,
        telephone -> Nullable<Text>,
        country_code -> Text,
        email -> Nullable<Text>,
        wx_userid -> Nullable<Text>,
        qq -> Nullable<Text>,
        extras -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        source -> Text,
        bk_status -> Nullable<Text>,
        bk_staff_status -> Nullable<Text>,
        gone_since -> Nullable<BigInt>,
    }
}

diesel::table! {
    directory_syncs (provider) {
        provider -> Text,
        next_sync_at -> BigInt,
    }
}

diesel::table! {
    dingtalk_userids (app_key, mobile) {
        app_key -> Text,
        mobile -> Text,
        userid -> Nullable<Text>,
        fetched_at -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::table! {
    messages (id) {
        id -> Text,
        app_code -> Text,
        idempotency_key -> Nullable<Text>,
        channel -> Text,
        sender -> Nullable<Text>,
        request_id -> Text,
        body -> Text,
        created_at -> BigInt,
        tenant_id -> Nullable<Text>,
    }
}

diesel::table! {
    deliveries (id) {
        id -> BigInt,
        message_id -> Text,
        receiver -> Text,
        kind -> Text,
        target -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        give_up_at -> BigInt,
        sent_at -> Nullable<BigInt>,
        parts_sent -> Integer,
        claimed_until -> Nullable<BigInt>,
        claimed_by -> Nullable<Text>,
        last_error -> Nullable<Text>,
        dingtalk_code -> Nullable<Text>,
        dingtalk_request_id -> Nullable<Text>,
        digest_id -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
        held_by -> Nullable<Text>,
    }
}

diesel::table! {
    delivery_attempts (id) {
        id -> BigInt,
        delivery_id -> BigInt,
        attempt -> Integer,
        at -> BigInt,
        outcome -> Text,
        code -> Nullable<Text>,
        error -> Nullable<Text>,
        dingtalk_request_id -> Nullable<Text>,
    }
}

diesel::table! {
    work_notice_tasks (delivery_id) {
        delivery_id -> BigInt,
        agent_id -> Text,
        task_id -> Text,
        part -> Integer,
        user_id -> Text,
        sent_at -> BigInt,
    }
}

diesel::table! {
    robot_state (robot) {
        robot -> Text,
        tat -> BigInt,
        paused_until -> BigInt,
        throttled_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    robot_sends (id) {
        id -> BigInt,
        robot -> Text,
        sent_at -> BigInt,
        delivery_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    dingtalk_sends (delivery_id, send_key) {
        delivery_id -> BigInt,
        send_key -> Text,
        path -> Text,
        user_id -> Text,
        sent_at -> BigInt,
        read_at -> Nullable<BigInt>,
        recalled_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    dingtalk_egress (scope) {
        scope -> Text,
        until_ms -> BigInt,
        code -> Text,
        message -> Text,
        lifts -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    dingtalk_calls (month, api) {
        month -> Text,
        api -> Text,
        calls -> BigInt,
    }
}

diesel::table! {
    templates (name) {
        name -> Text,
        title -> Text,
        body -> Text,
        updated_at -> BigInt,
    }
}

diesel::joinable!(app_tokens -> apps (app_code));
diesel::joinable!(deliveries -> messages (message_id));
diesel::joinable!(delivery_attempts -> deliveries (delivery_id));
diesel::joinable!(dingtalk_sends -> deliveries (delivery_id));
diesel::joinable!(work_notice_tasks -> deliveries (delivery_id));
diesel::allow_tables_to_appear_in_same_query!(
    apps,
    app_tokens,
    channels,
    users,
    dingtalk_userids,
    messages,
    deliveries,
    delivery_attempts,
    robot_state,
    robot_sends,
    dingtalk_sends,
    dingtalk_egress,
    dingtalk_calls,
    directory_syncs,
    templates,
    work_notice_tasks,
);
