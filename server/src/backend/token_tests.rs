//! The behaviour suite of the enrollment tokens area ([`TokenStore`],
//! `backend/tokens.rs`), built like `backend/agent_tests.rs`: every test is
//! one generic function given two "nodes" on one shared store, and
//! `two_node_suite!` (`two_nodes.rs`) runs each against SQLite (one store on a real file: one node,
//! so both handles are that node's) and PostgreSQL (two [`PgBackend`]s with
//! their own pools on one fresh database of the test binary's private
//! cluster, `outrider-pgtest`, as two server processes would be).
//! Concurrent consumptions must give what running them one after the other
//! gives: a token is never used more often than it allows.

use outrider_protocol::api::{EnrollmentTokenInfo, NewEnrollmentToken};

use super::Backend;
use super::tokens::{
    BOOTSTRAP_NOTE, BOOTSTRAP_TOKEN_ID, BootstrapToken, MintedToken, TokenGrant, TokenRefusal,
    TokenStore, secret_hash,
};
use super::two_nodes::two_node_suite;

two_node_suite!(
    a_created_token_is_listed_on_both_nodes_and_only_its_hash_is_stored,
    a_token_grants_its_allow_list_until_its_uses_run_out,
    expired_revoked_and_unknown_tokens_are_refused_and_refusals_are_counted,
    revoking_keeps_the_first_time_and_unknown_ids_are_not_found,
    the_bootstrap_row_is_kept_for_its_own_secret_and_replaced_for_a_new_one,
    tokens_are_listed_newest_first_then_by_id,
    concurrent_consumptions_never_over_use_a_token,
    nodes_setting_up_one_bootstrap_secret_at_once_leave_one_row,
);

const T0: i64 = 1_800_000_000_000;

fn minted(id: &str) -> MintedToken {
    MintedToken {
        id: id.into(),
        secret: format!("secret-of-{id}"),
    }
}

fn tags(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| (*s).to_owned()).collect()
}

fn request(uses: Option<u32>, allowed: Option<&[&str]>) -> NewEnrollmentToken {
    NewEnrollmentToken {
        note: "rack 4".into(),
        expires_in_secs: Some(3600),
        uses,
        allowed_tags: allowed.map(tags),
    }
}

async fn listed(b: &Backend, id: &str) -> EnrollmentTokenInfo {
    b.enrollment_tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.id == id)
        .expect("the token is listed")
}

/// Every stored (id, secret_sha256), by id, read with plain SQL.
async fn stored_secrets(b: &Backend) -> Vec<(String, String)> {
    const QUERY: &str = "SELECT id, secret_sha256 FROM enrollment_tokens ORDER BY id";
    match b {
        Backend::Sqlite(s) => s
            .store()
            .with_reader(|c| {
                let mut stmt = c.prepare(QUERY)?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(super::StoreError::from)
            })
            .await
            .unwrap()
            .unwrap(),
        Backend::Postgres(p) => p
            .client()
            .await
            .unwrap()
            .query(QUERY, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
    }
}

async fn a_created_token_is_listed_on_both_nodes_and_only_its_hash_is_stored(
    a: Backend,
    b: Backend,
) {
    assert_eq!(a.enrollment_tokens().await.unwrap(), vec![]);
    let created = a
        .create_enrollment_token(minted("t1"), request(Some(2), Some(&["web"])), T0)
        .await
        .unwrap();
    let expected = EnrollmentTokenInfo {
        id: "t1".into(),
        note: "rack 4".into(),
        created_at_ms: T0,
        expires_at_ms: Some(T0 + 3_600_000),
        uses_left: Some(2),
        used: 0,
        revoked_at_ms: None,
        allowed_tags: Some(tags(&["web"])),
        refused: 0,
    };
    assert_eq!(created.token, "secret-of-t1");
    assert_eq!(created.info, expected);
    assert_eq!(b.enrollment_tokens().await.unwrap(), vec![expected]);
    // The secret's SHA-256, never the secret.
    assert_eq!(
        stored_secrets(&b).await,
        vec![("t1".to_owned(), secret_hash("secret-of-t1"))]
    );
    // An id or a secret already taken is a store error, not a second row.
    assert!(
        b.create_enrollment_token(minted("t1"), request(None, None), T0)
            .await
            .is_err()
    );
    let same_secret = MintedToken {
        id: "t2".into(),
        secret: "secret-of-t1".into(),
    };
    assert!(
        b.create_enrollment_token(same_secret, request(None, None), T0)
            .await
            .is_err()
    );
    assert_eq!(a.enrollment_tokens().await.unwrap().len(), 1);
    // No lifetime asked for: the default one, a day.
    let default = b
        .create_enrollment_token(minted("t3"), NewEnrollmentToken::default(), T0)
        .await
        .unwrap();
    assert_eq!(
        (default.info.expires_at_ms, default.info.allowed_tags),
        (Some(T0 + 86_400_000), None)
    );
}

async fn a_token_grants_its_allow_list_until_its_uses_run_out(a: Backend, b: Backend) {
    let twice = a
        .create_enrollment_token(minted("t1"), request(Some(2), Some(&["web", "db"])), T0)
        .await
        .unwrap();
    let grant = Ok(TokenGrant {
        id: "t1".into(),
        allowed_tags: Some(tags(&["web", "db"])),
    });
    assert_eq!(
        a.consume_enrollment_token(&twice.token, T0 + 1)
            .await
            .unwrap(),
        grant
    );
    assert_eq!(
        b.consume_enrollment_token(&twice.token, T0 + 2)
            .await
            .unwrap(),
        grant
    );
    assert_eq!(
        a.consume_enrollment_token(&twice.token, T0 + 3)
            .await
            .unwrap(),
        Err(TokenRefusal::UsedUp { id: "t1".into() })
    );
    let row = listed(&b, "t1").await;
    assert_eq!((row.used, row.uses_left, row.refused), (2, Some(0), 1));
    // Unlimited: every use counted, none left to count down.
    let open = b
        .create_enrollment_token(minted("t2"), request(None, None), T0)
        .await
        .unwrap();
    for at in 1..=3 {
        assert_eq!(
            a.consume_enrollment_token(&open.token, T0 + at)
                .await
                .unwrap(),
            Ok(TokenGrant {
                id: "t2".into(),
                allowed_tags: None
            })
        );
    }
    let row = listed(&a, "t2").await;
    assert_eq!((row.used, row.uses_left, row.refused), (3, None, 0));
}

async fn expired_revoked_and_unknown_tokens_are_refused_and_refusals_are_counted(
    a: Backend,
    b: Backend,
) {
    let minute = NewEnrollmentToken {
        expires_in_secs: Some(60),
        ..request(Some(5), None)
    };
    let token = a
        .create_enrollment_token(minted("t1"), minute, T0)
        .await
        .unwrap()
        .token;
    // The clock is the argument: a millisecond before the expiry it works.
    assert!(
        b.consume_enrollment_token(&token, T0 + 59_999)
            .await
            .unwrap()
            .is_ok()
    );
    for at in [T0 + 60_000, T0 + 120_000] {
        assert_eq!(
            b.consume_enrollment_token(&token, at).await.unwrap(),
            Err(TokenRefusal::Expired { id: "t1".into() })
        );
    }
    let row = listed(&a, "t1").await;
    assert_eq!((row.used, row.uses_left, row.refused), (1, Some(4), 2));
    // Revoked: refused even before its expiry, and reported as revoked
    // after it.
    assert!(a.revoke_enrollment_token("t1", T0 + 1).await.unwrap());
    for at in [T0 + 2, T0 + 60_000] {
        assert_eq!(
            b.consume_enrollment_token(&token, at).await.unwrap(),
            Err(TokenRefusal::Revoked { id: "t1".into() })
        );
    }
    let row = listed(&b, "t1").await;
    assert_eq!((row.used, row.uses_left, row.refused), (1, Some(4), 4));
    // Unknown secrets are refused and change nothing.
    assert_eq!(
        a.consume_enrollment_token("secret-of-t2", T0)
            .await
            .unwrap(),
        Err(TokenRefusal::Unknown)
    );
    assert_eq!(a.enrollment_tokens().await.unwrap(), vec![row]);
}

async fn revoking_keeps_the_first_time_and_unknown_ids_are_not_found(a: Backend, b: Backend) {
    a.create_enrollment_token(minted("t1"), request(None, None), T0)
        .await
        .unwrap();
    assert!(a.revoke_enrollment_token("t1", T0 + 5).await.unwrap());
    assert!(b.revoke_enrollment_token("t1", T0 + 9).await.unwrap());
    assert_eq!(listed(&a, "t1").await.revoked_at_ms, Some(T0 + 5));
    assert!(!b.revoke_enrollment_token("t9", T0).await.unwrap());
    assert_eq!(a.enrollment_tokens().await.unwrap().len(), 1);
    // Concurrent revocations from both nodes: one time, one of theirs.
    b.create_enrollment_token(minted("t2"), request(None, None), T0)
        .await
        .unwrap();
    let (x, y) = tokio::join!(
        a.revoke_enrollment_token("t2", T0 + 20),
        b.revoke_enrollment_token("t2", T0 + 30),
    );
    assert!(x.unwrap() && y.unwrap());
    let at = listed(&b, "t2").await.revoked_at_ms;
    assert!(at == Some(T0 + 20) || at == Some(T0 + 30), "{at:?}");
}

async fn the_bootstrap_row_is_kept_for_its_own_secret_and_replaced_for_a_new_one(
    a: Backend,
    b: Backend,
) {
    let boot = |secret: &str, uses| BootstrapToken {
        secret: secret.into(),
        expires_in_secs: 600,
        uses,
    };
    let first = a
        .ensure_bootstrap_token(boot("s1", Some(3)), T0)
        .await
        .unwrap();
    assert_eq!(
        first,
        EnrollmentTokenInfo {
            id: BOOTSTRAP_TOKEN_ID.into(),
            note: BOOTSTRAP_NOTE.into(),
            created_at_ms: T0,
            expires_at_ms: Some(T0 + 600_000),
            uses_left: Some(3),
            used: 0,
            revoked_at_ms: None,
            allowed_tags: None,
            refused: 0,
        }
    );
    assert_eq!(
        stored_secrets(&a).await,
        vec![(BOOTSTRAP_TOKEN_ID.to_owned(), secret_hash("s1"))]
    );
    // Used and revoked; a restart (on any node) with the same secret and
    // other settings keeps all of it.
    assert!(
        a.consume_enrollment_token("s1", T0 + 1)
            .await
            .unwrap()
            .is_ok()
    );
    assert!(
        a.revoke_enrollment_token(BOOTSTRAP_TOKEN_ID, T0 + 2)
            .await
            .unwrap()
    );
    let kept = b
        .ensure_bootstrap_token(boot("s1", None), T0 + 1_000_000)
        .await
        .unwrap();
    assert_eq!(
        (
            kept.created_at_ms,
            kept.expires_at_ms,
            kept.uses_left,
            kept.used,
            kept.revoked_at_ms
        ),
        (T0, Some(T0 + 600_000), Some(2), 1, Some(T0 + 2))
    );
    // A new secret that was an ordinary token: it becomes the bootstrap
    // row, with a new lifetime; the old secret and the old row are gone.
    a.create_enrollment_token(
        MintedToken {
            id: "t1".into(),
            secret: "s2".into(),
        },
        request(None, None),
        T0,
    )
    .await
    .unwrap();
    let replaced = b
        .ensure_bootstrap_token(boot("s2", None), T0 + 10)
        .await
        .unwrap();
    assert_eq!(
        (
            replaced.created_at_ms,
            replaced.expires_at_ms,
            replaced.uses_left,
            replaced.used,
            replaced.revoked_at_ms
        ),
        (T0 + 10, Some(T0 + 600_010), None, 0, None)
    );
    assert_eq!(a.enrollment_tokens().await.unwrap(), vec![replaced]);
    assert_eq!(
        stored_secrets(&a).await,
        vec![(BOOTSTRAP_TOKEN_ID.to_owned(), secret_hash("s2"))]
    );
    assert_eq!(
        a.consume_enrollment_token("s1", T0 + 11).await.unwrap(),
        Err(TokenRefusal::Unknown)
    );
    assert_eq!(
        b.consume_enrollment_token("s2", T0 + 11).await.unwrap(),
        Ok(TokenGrant {
            id: BOOTSTRAP_TOKEN_ID.into(),
            allowed_tags: None
        })
    );
}

async fn tokens_are_listed_newest_first_then_by_id(a: Backend, b: Backend) {
    for (id, at) in [
        ("b", T0),
        ("a", T0),
        ("B", T0),
        ("c", T0 + 1),
        ("0", T0 - 1),
    ] {
        a.create_enrollment_token(minted(id), request(None, None), at)
            .await
            .unwrap();
    }
    let ids: Vec<String> = b
        .enrollment_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    // Ids compared byte by byte: "B" before "a".
    assert_eq!(ids, ["c", "B", "a", "b", "0"]);
}

async fn concurrent_consumptions_never_over_use_a_token(a: Backend, b: Backend) {
    const ROUNDS: u32 = 4;
    const RACERS: u32 = 24;
    const USES: u32 = 3;
    let open = a
        .create_enrollment_token(minted("open"), request(None, None), T0)
        .await
        .unwrap()
        .token;
    // Several rounds, each a fresh limited token raced for with the open
    // one, from both nodes at once.
    for round in 0..ROUNDS {
        let id = format!("t{round}");
        let limited = b
            .create_enrollment_token(minted(&id), request(Some(USES), None), T0)
            .await
            .unwrap()
            .token;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..RACERS {
            for secret in [&limited, &open] {
                let node = if i % 2 == 0 { a.clone() } else { b.clone() };
                let secret = secret.clone();
                tasks.spawn(async move { node.consume_enrollment_token(&secret, T0 + 1).await });
            }
        }
        let (mut limited_grants, mut open_grants, mut used_up) = (0, 0, 0);
        while let Some(done) = tasks.join_next().await {
            match done.unwrap().unwrap() {
                Ok(grant) if grant.id == id => limited_grants += 1,
                Ok(grant) if grant.id == "open" => open_grants += 1,
                Err(TokenRefusal::UsedUp { id: refused }) if refused == id => used_up += 1,
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(
            (limited_grants, open_grants, used_up),
            (USES, RACERS, RACERS - USES),
            "round {round}"
        );
        let row = listed(&a, &id).await;
        assert_eq!(
            (row.used, row.uses_left, row.refused),
            (u64::from(USES), Some(0), u64::from(RACERS - USES)),
            "round {round}"
        );
    }
    let row = listed(&a, "open").await;
    assert_eq!(
        (row.used, row.uses_left),
        (u64::from(ROUNDS * RACERS), None)
    );
}

async fn nodes_setting_up_one_bootstrap_secret_at_once_leave_one_row(a: Backend, b: Backend) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let token = BootstrapToken {
            secret: "shared".into(),
            expires_in_secs: 600,
            uses: None,
        };
        tasks.spawn(async move { node.ensure_bootstrap_token(token, T0 + i).await });
    }
    let mut rows = Vec::new();
    while let Some(done) = tasks.join_next().await {
        rows.push(done.unwrap().unwrap());
    }
    // Each saw the row the first one wrote.
    let first = rows[0].clone();
    assert!(rows.iter().all(|r| *r == first), "{rows:?}");
    assert_eq!(b.enrollment_tokens().await.unwrap(), vec![first]);
}

/// PostgreSQL, step by step: a consumption that finds its token's row
/// locked by another node's uncommitted consumption of the last use waits,
/// then judges the row's newest version: used up, and that refusal is
/// counted on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_consumption_waits_for_the_tokens_row_and_judges_its_newest_version() {
    let (db, node) = super::two_nodes::pg_database_node().await;
    let token = node
        .create_enrollment_token(minted("t1"), request(Some(1), None), T0)
        .await
        .unwrap()
        .token;
    let (mut other, connection) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    let last_use = other.transaction().await.unwrap();
    let taken = last_use
        .execute(
            "UPDATE enrollment_tokens SET used = used + 1, uses_left = uses_left - 1
             WHERE id = 't1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(taken, 1);
    let waiting = {
        let node = node.clone();
        tokio::spawn(async move { node.consume_enrollment_token(&token, T0 + 1).await })
    };
    super::two_nodes::wait_for_a_lock_wait(&db.config, None).await;
    last_use.commit().await.unwrap();
    assert_eq!(
        waiting.await.unwrap().unwrap(),
        Err(TokenRefusal::UsedUp { id: "t1".into() })
    );
    let row = listed(&node, "t1").await;
    assert_eq!((row.used, row.uses_left, row.refused), (1, Some(0), 1));
    // The table itself refuses an over-use.
    assert!(
        other
            .execute(
                "UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = 't1'",
                &[],
            )
            .await
            .is_err()
    );
    drop(other);
    driver.await.unwrap().unwrap();
}
