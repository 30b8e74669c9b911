//! Which server endpoint to dial next when agent.toml names several
//! (`server_url` and `extra_server_urls`, see `config.rs`): a pure decision,
//! tested by table; the reconnect loop in `connection.rs` only executes it.
//!
//! Order: the configured endpoints shuffled with a seed derived from the
//! agent's fingerprint ([`dial_seed`]), then the endpoint the last session
//! was welcomed at (`last_url` in `connection.json`, see `saved.rs`) moved
//! to the front. A fingerprint seed instead of fresh randomness: a fleet
//! still spreads evenly over the nodes (fingerprints are hashes of random
//! keys), while one agent keeps the same order across restarts, so its logs
//! read the same every time and an operator (or a test) can tell which node
//! a host tries first. The remembered endpoint keeps an agent on the node
//! that last worked for it, so a restart does not move it.
//!
//! Pacing: a failed attempt moves straight on to the next endpoint; the
//! reconnect backoff (`backoff.rs`) applies only after a full round, when
//! every endpoint failed once. A dead node so costs one refused connect, not
//! a backoff delay, while during a whole outage each agent makes one attempt
//! per endpoint per backoff step — one at a time, never all at once. The
//! failure count starts over after every session that got a `Welcome`.

/// How long to wait before the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// Dial at once: the round over the endpoints is not finished.
    None,
    /// Wait the reconnect backoff's next delay: a round just ended.
    Backoff,
}

/// The next attempt: which endpoint (an index into the configured list)
/// and whether the backoff comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextDial {
    /// Index into `AgentSettings::endpoints`.
    pub endpoint: usize,
    /// What to wait before dialing it.
    pub pause: Pause,
}

/// The shuffle seed of the agent with `fingerprint` (FNV-1a, 64 bit):
/// stable for one agent, different between agents.
pub fn dial_seed(fingerprint: &str) -> u64 {
    fingerprint
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// The order a round dials `count` endpoints in: shuffled by `seed`, with
/// `remembered` (when it is an index below `count`) first.
pub fn dial_order(count: usize, seed: u64, remembered: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    // Fisher–Yates driven by splitmix64; modulo bias is irrelevant here.
    let mut state = seed;
    for i in (1..count).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // `i + 1` ≤ count fits u64 and the remainder is ≤ i: no truncation.
        let j = (z % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    if let Some(at) = remembered.and_then(|r| order.iter().position(|&e| e == r)) {
        let first = order.remove(at);
        order.insert(0, first);
    }
    order
}

/// The attempt after `failures` failed ones (since the start or the last
/// `Welcome`) over `count` endpoints (at least one): the endpoints in
/// [`dial_order`], round after round, with [`Pause::Backoff`] before each
/// round but the first.
pub fn next_dial(count: usize, seed: u64, remembered: Option<usize>, failures: u32) -> NextDial {
    let order = dial_order(count.max(1), seed, remembered);
    let failures = usize::try_from(failures).unwrap_or(usize::MAX);
    let at = failures % order.len();
    NextDial {
        endpoint: order[at],
        pause: if failures > 0 && at == 0 {
            Pause::Backoff
        } else {
            Pause::None
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_stable_permutation_per_seed_with_the_remembered_first() {
        for count in 0..=16 {
            for seed in [0, 1, dial_seed("a"), dial_seed("b"), u64::MAX] {
                let order = dial_order(count, seed, None);
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..count).collect::<Vec<_>>(), "{count} {seed}");
                assert_eq!(order, dial_order(count, seed, None), "stable");
                for remembered in 0..count {
                    let with = dial_order(count, seed, Some(remembered));
                    assert_eq!(with[0], remembered);
                    let rest: Vec<usize> =
                        order.iter().copied().filter(|&e| e != remembered).collect();
                    assert_eq!(with[1..], rest[..], "the others keep their order");
                }
                // A remembered index the list no longer has is ignored.
                assert_eq!(dial_order(count, seed, Some(count)), order);
            }
        }
    }

    #[test]
    fn agents_spread_over_the_endpoints() {
        // 3000 fingerprint-like seeds over 3 nodes: each node is first for
        // roughly a third of the fleet.
        let mut first = [0u32; 3];
        for agent in 0..3000 {
            let seed = dial_seed(&format!("{agent:020x}"));
            first[dial_order(3, seed, None)[0]] += 1;
        }
        assert!(first.iter().all(|&n| (800..1200).contains(&n)), "{first:?}");
    }

    #[test]
    fn next_dial_walks_the_order_and_backs_off_between_rounds() {
        let seed = dial_seed("0123456789abcdef0123");
        let order = dial_order(3, seed, None);
        let remembered = order[2];
        let with_memory = dial_order(3, seed, Some(remembered));
        use Pause::{Backoff, None as Now};
        // (count, remembered, failures, expected endpoint, pause)
        let table: &[(usize, Option<usize>, u32, usize, Pause)] = &[
            // One URL: every failure backs off, as before several URLs.
            (1, None, 0, 0, Now),
            (1, None, 1, 0, Backoff),
            (1, None, 7, 0, Backoff),
            (1, Some(0), 3, 0, Backoff),
            // Three URLs, nothing remembered: the shuffled order, round by round.
            (3, None, 0, order[0], Now),
            (3, None, 1, order[1], Now),
            (3, None, 2, order[2], Now),
            (3, None, 3, order[0], Backoff),
            (3, None, 4, order[1], Now),
            (3, None, 6, order[0], Backoff),
            // The remembered endpoint opens every round.
            (3, Some(remembered), 0, remembered, Now),
            (3, Some(remembered), 1, with_memory[1], Now),
            (3, Some(remembered), 2, with_memory[2], Now),
            (3, Some(remembered), 3, remembered, Backoff),
            // A huge failure count still lands in the list (2^32 - 1 is a
            // multiple of 3: a round starts).
            (3, None, u32::MAX, order[0], Backoff),
            (3, None, u32::MAX - 1, order[2], Now),
        ];
        for &(count, remembered, failures, endpoint, pause) in table {
            assert_eq!(
                next_dial(count, seed, remembered, failures),
                NextDial { endpoint, pause },
                "count {count}, remembered {remembered:?}, failures {failures}"
            );
        }
    }
}
