//! What each open tab shows, so the live hub (`server/src/dashboard/live.rs`)
//! renders and sends only that.
//!
//! A tab's stream names its page's rows in its address
//! (`/live?rows=<fp>,<fp>&list=fleet`, `/live?agent=<fp>`): a [`Filter`].
//! Every frame has a [`Scope`]; a stream carries a frame only when its
//! filter [`Filter::wants`] it — one set lookup, no allocation. The hub
//! renders a row only when some tab shows it ([`Interests`]), so with no tab
//! open it renders nothing.
//!
//! A row the hub did not render because nobody showed it is remembered as
//! *skipped* with the number it would have had: a tab that comes back later
//! with an older `Last-Event-ID` (or its page's `after=`) for that row would
//! miss the change, so it gets one `reset` instead ([`Interests::missed`]).

use std::collections::{HashMap, HashSet};

use outrider_protocol::Fingerprint;

/// Most rows one stream may name: a fleet page shows 50
/// (`server/src/dashboard/pages.rs`, `FLEET_PAGE`).
pub const MAX_ROWS: usize = 200;

/// Most agents whose interest (and skipped rows) is remembered; past it the
/// idle ones are forgotten and every older resume resets.
pub const MAX_REMEMBERED: usize = 65_536;

/// Why a stream's address is refused (a 400 naming it).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("rows= names {0} agents; a stream takes at most {MAX_ROWS}")]
    TooManyRows(usize),
    #[error("rows= entry {0:?} is not an agent fingerprint")]
    BadRow(String),
    #[error("agent= {0:?} is not an agent fingerprint")]
    BadAgent(String),
    #[error("list= {0:?} is not a list a page shows (only `fleet`)")]
    BadList(String),
}

/// What one tab shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Fleet rows (`agent-<fp>`) on the page.
    pub rows: HashSet<Fingerprint>,
    /// The agent whose page it is: its presence and check states.
    pub agent: Option<Fingerprint>,
    /// Whether the page lists the fleet, so an agent added or removed
    /// changes which rows it shows.
    pub list: bool,
}

/// Whom a frame concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every stream (`reset`).
    All,
    /// The fleet row of this agent.
    FleetRow(Fingerprint),
    /// This agent's own page (presence, check states).
    AgentPage(Fingerprint),
    /// The fleet's membership changed: pages listing it refetch.
    List,
}

impl Filter {
    /// The filter of a stream's query values, or what is wrong with them.
    pub fn parse(
        rows: Option<&str>,
        agent: Option<&str>,
        list: Option<&str>,
    ) -> Result<Filter, FilterError> {
        let mut filter = Filter::default();
        if let Some(rows) = rows.filter(|r| !r.is_empty()) {
            let n = rows.split(',').count();
            if n > MAX_ROWS {
                return Err(FilterError::TooManyRows(n));
            }
            for text in rows.split(',') {
                let fp = text
                    .parse()
                    .map_err(|_| FilterError::BadRow(text.chars().take(64).collect()))?;
                filter.rows.insert(fp);
            }
        }
        if let Some(text) = agent {
            filter.agent = Some(
                text.parse()
                    .map_err(|_| FilterError::BadAgent(text.chars().take(64).collect()))?,
            );
        }
        match list {
            None => {}
            Some("fleet") => filter.list = true,
            Some(other) => return Err(FilterError::BadList(other.chars().take(64).collect())),
        }
        Ok(filter)
    }

    /// Whether a stream with this filter carries a frame of `scope`.
    pub fn wants(&self, scope: &Scope) -> bool {
        match scope {
            Scope::All => true,
            Scope::FleetRow(fp) => self.rows.contains(fp),
            Scope::AgentPage(fp) => self.agent.as_ref() == Some(fp),
            Scope::List => self.list,
        }
    }
}

/// Which kind of row of an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Its fleet row.
    Row,
    /// Its own page (presence, check states).
    Page,
}

/// How many streams (and page leases) show an agent, and the newest frame
/// number of its rows that was skipped for lack of one.
#[derive(Debug, Default)]
struct Interest {
    rows: u32,
    pages: u32,
    /// Whether a tab ever showed its page: only then are the page's skips
    /// remembered (every result is one).
    paged: bool,
    row_skipped: u64,
    page_skipped: u64,
}

/// Every open tab's interest, by agent.
#[derive(Debug, Default)]
pub struct Interests {
    by_agent: HashMap<Fingerprint, Interest>,
    /// Streams listing the fleet.
    lists: usize,
    /// Resumes from before this frame number reset: skipped rows were
    /// forgotten then ([`MAX_REMEMBERED`]).
    floor: u64,
}

impl Interests {
    /// Counts `filter`'s interest until [`Interests::remove`]; `next` is the
    /// next frame number, the floor if idle agents must be forgotten.
    pub fn add(&mut self, filter: &Filter, next: u64) {
        self.make_room(filter.rows.len() + 1, next);
        for fp in &filter.rows {
            self.by_agent.entry(fp.clone()).or_default().rows += 1;
        }
        if let Some(fp) = &filter.agent {
            let i = self.by_agent.entry(fp.clone()).or_default();
            i.pages += 1;
            i.paged = true;
        }
        self.lists += usize::from(filter.list);
    }

    /// Ends an interest counted by [`Interests::add`]. The agent stays
    /// remembered, so what is skipped from now on is known.
    pub fn remove(&mut self, filter: &Filter) {
        for fp in &filter.rows {
            if let Some(i) = self.by_agent.get_mut(fp) {
                i.rows = i.rows.saturating_sub(1);
            }
        }
        if let Some(i) = filter
            .agent
            .as_ref()
            .and_then(|fp| self.by_agent.get_mut(fp))
        {
            i.pages = i.pages.saturating_sub(1);
        }
        self.lists = self.lists.saturating_sub(usize::from(filter.list));
    }

    /// Whether some tab shows `kind` of `fp`. When none does, `number()`
    /// is taken and remembered as skipped: for a fleet row always (they
    /// change rarely — presence, worst state — and a fleet page learns its
    /// rows only from its query, so a change between query and stream must
    /// be known); for an agent page only once a tab showed it (its checks
    /// change with every result, and an agent page registers before its
    /// query).
    pub fn shown(&mut self, fp: &Fingerprint, kind: Kind, number: impl FnOnce() -> u64) -> bool {
        if kind == Kind::Row && !self.by_agent.contains_key(fp) {
            let n = number();
            self.make_room(1, n);
            self.by_agent.insert(
                fp.clone(),
                Interest {
                    row_skipped: n,
                    ..Interest::default()
                },
            );
            return false;
        }
        let Some(i) = self.by_agent.get_mut(fp) else {
            return false;
        };
        if kind == Kind::Page && !i.paged {
            return false;
        }
        let (count, skipped) = match kind {
            Kind::Row => (i.rows, &mut i.row_skipped),
            Kind::Page => (i.pages, &mut i.page_skipped),
        };
        if count > 0 {
            return true;
        }
        *skipped = number();
        false
    }

    /// Forgets the agents no tab shows when `adding` more would pass
    /// [`MAX_REMEMBERED`]; resumes from before `next` then reset.
    fn make_room(&mut self, adding: usize, next: u64) {
        if self.by_agent.len() + adding > MAX_REMEMBERED {
            self.by_agent.retain(|_, i| i.rows > 0 || i.pages > 0);
            self.floor = next;
        }
    }

    /// Whether some stream lists the fleet.
    pub fn listed(&self) -> bool {
        self.lists > 0
    }

    /// Whether a tab of `filter` that saw the frames up to `seq` missed a
    /// change no frame carries (so it must reset).
    pub fn missed(&self, filter: &Filter, seq: u64) -> bool {
        if seq < self.floor {
            return true;
        }
        let skipped = |fp: &Fingerprint, kind| {
            self.by_agent.get(fp).is_some_and(|i| match kind {
                Kind::Row => i.row_skipped > seq,
                Kind::Page => i.page_skipped > seq,
            })
        };
        filter.rows.iter().any(|fp| skipped(fp, Kind::Row))
            || filter.agent.iter().any(|fp| skipped(fp, Kind::Page))
    }

    /// How many agents are remembered (for tests and bounds).
    pub fn remembered(&self) -> usize {
        self.by_agent.len()
    }

    /// Whether any agent is shown by some tab (for tests).
    pub fn any_shown(&self) -> bool {
        self.by_agent.values().any(|i| i.rows > 0 || i.pages > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u8) -> Fingerprint {
        format!("{n:02x}23456789abcdef0123").parse().unwrap()
    }

    #[test]
    fn parse_by_table() {
        let (a, b) = (fp(1).to_string(), fp(2).to_string());
        let two = format!("{a},{b}");
        let many = vec![a.as_str(); MAX_ROWS + 1].join(",");
        let most = vec![a.as_str(); MAX_ROWS].join(",");
        let rows = |fps: &[Fingerprint]| fps.iter().cloned().collect::<HashSet<_>>();
        for (r, g, l, expected) in [
            (None, None, None, Ok(Filter::default())),
            (Some(""), None, None, Ok(Filter::default())),
            (
                Some(two.as_str()),
                None,
                Some("fleet"),
                Ok(Filter {
                    rows: rows(&[fp(1), fp(2)]),
                    agent: None,
                    list: true,
                }),
            ),
            (
                Some(most.as_str()),
                None,
                None,
                Ok(Filter {
                    rows: rows(&[fp(1)]),
                    ..Filter::default()
                }),
            ),
            (
                None,
                Some(a.as_str()),
                None,
                Ok(Filter {
                    agent: Some(fp(1)),
                    ..Filter::default()
                }),
            ),
            (
                Some(many.as_str()),
                None,
                None,
                Err(FilterError::TooManyRows(MAX_ROWS + 1)),
            ),
            (
                Some("zz"),
                None,
                None,
                Err(FilterError::BadRow("zz".into())),
            ),
            (
                Some(&format!("{a},")),
                None,
                None,
                Err(FilterError::BadRow(String::new())),
            ),
            (
                None,
                Some("x"),
                None,
                Err(FilterError::BadAgent("x".into())),
            ),
            (
                None,
                None,
                Some("agents"),
                Err(FilterError::BadList("agents".into())),
            ),
        ] {
            assert_eq!(Filter::parse(r, g, l), expected, "{r:?} {g:?} {l:?}");
        }
    }

    #[test]
    fn wants_by_table() {
        let fleet = Filter {
            rows: [fp(1)].into_iter().collect(),
            agent: None,
            list: true,
        };
        let page = Filter {
            agent: Some(fp(1)),
            ..Filter::default()
        };
        let none = Filter::default();
        for (filter, scope, expected) in [
            (&fleet, Scope::FleetRow(fp(1)), true),
            (&fleet, Scope::FleetRow(fp(2)), false),
            (&fleet, Scope::AgentPage(fp(1)), false),
            (&fleet, Scope::List, true),
            (&fleet, Scope::All, true),
            (&page, Scope::FleetRow(fp(1)), false),
            (&page, Scope::AgentPage(fp(1)), true),
            (&page, Scope::AgentPage(fp(2)), false),
            (&page, Scope::List, false),
            (&none, Scope::FleetRow(fp(1)), false),
            (&none, Scope::AgentPage(fp(1)), false),
            (&none, Scope::List, false),
            (&none, Scope::All, true),
        ] {
            assert_eq!(filter.wants(&scope), expected, "{filter:?} {scope:?}");
        }
    }

    #[test]
    fn only_shown_rows_render_and_skips_after_a_tab_left_are_missed() {
        let mut i = Interests::default();
        // Nobody: nothing shown; an agent page nobody opened is not
        // remembered, a fleet row's change is.
        assert!(!i.shown(&fp(3), Kind::Page, || panic!("no number taken")));
        assert_eq!(i.remembered(), 0);
        assert!(!i.shown(&fp(1), Kind::Row, || 3));
        assert_eq!(i.remembered(), 1);
        // A fleet row remembered costs its page's results nothing.
        assert!(!i.shown(&fp(1), Kind::Page, || panic!("no number taken")));
        let tab = Filter {
            rows: [fp(1)].into_iter().collect(),
            agent: Some(fp(2)),
            list: true,
        };
        i.add(&tab, 1);
        assert!(i.shown(&fp(1), Kind::Row, || 0));
        assert!(
            !i.shown(&fp(1), Kind::Page, || panic!("never opened")),
            "fp1's page is not open"
        );
        assert!(i.shown(&fp(2), Kind::Page, || 0));
        assert!(!i.shown(&fp(2), Kind::Row, || 6));
        assert!(i.listed());
        // The skip before the tab came (3) is missed only from before it;
        // skips of what the tab does not show do not concern it.
        assert!(i.missed(&tab, 2));
        assert!(!i.missed(&tab, 4));
        i.remove(&tab);
        assert!(!i.listed() && !i.any_shown());
        // Shown before, skipped now at number 10: a resume from 9 missed it.
        assert!(!i.shown(&fp(1), Kind::Row, || 10));
        assert!(i.missed(&tab, 9));
        assert!(!i.missed(&tab, 10));
        assert!(!i.shown(&fp(2), Kind::Page, || 12));
        assert!(i.missed(&tab, 11));
        assert!(!i.missed(&tab, 12));
    }

    #[test]
    fn remembered_agents_are_bounded() {
        let mut i = Interests::default();
        let mut n = 0u32;
        let fp_n = |n: u32| -> Fingerprint { format!("{n:08x}456789abcdef").parse().unwrap() };
        let one = |n| Filter {
            rows: [fp_n(n)].into_iter().collect(),
            ..Filter::default()
        };
        let kept = one(u32::MAX);
        i.add(&kept, 1);
        while (n as usize) < MAX_REMEMBERED + 10 {
            let f = one(n);
            i.add(&f, 100);
            i.remove(&f);
            n += 1;
        }
        assert!(i.remembered() <= MAX_REMEMBERED);
        // The open tab stays counted; resumes from before the forgetting reset.
        assert!(i.shown(&fp_n(u32::MAX), Kind::Row, || 0));
        assert!(i.missed(&one(0), 99));
        assert!(!i.missed(&one(0), 100));
    }
}
