//! The spool through the whole agent: un-acked results outlive the process
//! (no state blob at all), acked ones are not sent again, and damaged spool
//! files are set aside without stopping the agent.

use outrider_protocol::ServerMessage;

use crate::support::{Agent, FakeServer, check, config, script, sh};

#[tokio::test]
async fn a_restarted_agent_resends_exactly_the_unacked_results_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let ok = script(dir.path(), "ok.sh", "echo 'OK - fine | v=1'");
    let server = FakeServer::start().await;

    let first = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    conn.send(config(1, vec![check("ok", sh(&ok))])).await;
    let mut sent = conn.recv_results().await;
    while sent.len() < 2 {
        sent.extend(conn.recv_results().await);
    }
    // The server stores only the first one.
    conn.send(ServerMessage::Ack { up_to: sent[0].seq }).await;
    let blob = first.stop_via(conn).await;

    // A new process: no state blob, only what is on disk.
    let second = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    let hello = conn.handshake(sent[0].seq).await;
    assert_eq!(hello.last_seq, blob.next_seq - 1, "numbering continues");
    let resent = conn.recv_results().await;
    assert_eq!(resent[0], sent[1], "first the oldest un-acked, unchanged");
    assert!(
        resent.iter().all(|r| r.seq > sent[0].seq),
        "nothing acked again"
    );
    second.stop_via(conn).await;
}

#[tokio::test]
async fn a_damaged_segment_is_set_aside_and_the_agent_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(
        spool.join("00000000000000000001.seg"),
        b"\xff\xff\xff\xffgarbage",
    )
    .unwrap();
    let ok = script(dir.path(), "ok.sh", "echo 'OK - fine'");
    let server = FakeServer::start().await;
    let agent = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    conn.send(config(1, vec![check("ok", sh(&ok))])).await;
    assert_eq!(conn.recv_result_of("ok").await.summary, "OK - fine");
    assert!(agent.hooks.logged("is damaged at byte 0"));
    let aside: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".corrupt"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    agent.stop_via(conn).await;
}
