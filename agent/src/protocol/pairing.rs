//! Pairs responses with requests per session. Ids repeat across sessions and
//! both directions may use the same id at once (client request 1 and server
//! request 1), so the key is (session, id) and the requester disambiguates.
//! There is no timeout: only a bound on pending requests per session, with
//! every eviction counted.

use std::sync::Arc;

use crate::collections::FastMap;

use super::{Message, RpcId};

/// What the pairer remembers of a request.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Requester process id (0 when unknown).
    pub requester: u32,
    /// Kernel timestamp of the request, ns.
    pub ts_ns: u64,
    /// Event sequence number of the request.
    pub seq: u64,
    /// Method.
    pub method: Option<Arc<str>>,
    /// Tool, resource, prompt of the request.
    pub tool: Option<Arc<str>>,
    /// Resource URI.
    pub resource: Option<Box<str>>,
    /// Prompt name.
    pub prompt: Option<Box<str>>,
    /// Id of the first request of an input_required chain (2026).
    pub logical_id: Option<RpcId>,
    /// The canonical hash of a tools/call's arguments, when the detectors
    /// computed one: what they judge the response against.
    pub args_hash: Option<u64>,
    insertion: u64,
}

/// Counters of the pairer.
#[derive(Debug, Default, Clone, Copy)]
pub struct PairStats {
    /// Requests evicted because their session had too many pending.
    pub evicted: u64,
    /// Responses with no matching request.
    pub unmatched: u64,
    /// Requests cancelled by notifications/cancelled.
    pub cancelled: u64,
    /// Requests still pending when their session ended.
    pub unanswered: u64,
}

#[derive(Default)]
struct SessionPending {
    by_id: FastMap<RpcId, Vec<Pending>>,
    /// Insertion order, for O(1) amortised eviction of the oldest; entries
    /// already answered are skipped lazily.
    order: std::collections::VecDeque<(RpcId, u64)>,
    count: usize,
    /// (method, tool) → logical id, for 2026 input_required retries.
    awaiting_input: FastMap<(Arc<str>, Option<Arc<str>>), RpcId>,
}

/// Request/response pairing across all sessions.
pub struct Pairer {
    sessions: FastMap<u64, SessionPending>,
    max_pending: usize,
    insertion: u64,
    /// Counters.
    pub stats: PairStats,
}

impl Pairer {
    /// A pairer keeping at most `max_pending` requests per session.
    pub fn new(max_pending: usize) -> Self {
        Self {
            sessions: FastMap::default(),
            max_pending: max_pending.max(1),
            insertion: 0,
            stats: PairStats::default(),
        }
    }

    /// Requests currently pending, all sessions.
    pub fn pending(&self) -> usize {
        self.sessions.values().map(|s| s.count).sum()
    }

    /// Records a request. Returns the logical id when the request retries an
    /// earlier input_required request (2026-07-28).
    pub fn request(
        &mut self,
        session: u64,
        requester: u32,
        msg: &Message,
        ts_ns: u64,
        seq: u64,
        args_hash: Option<u64>,
    ) -> Option<RpcId> {
        let id = msg.id.clone()?;
        let s = self.sessions.entry(session).or_default();
        let logical_id = if msg.is_retry {
            let key = (msg.method.clone().unwrap_or_default(), msg.tool.clone());
            s.awaiting_input.remove(&key)
        } else {
            None
        };
        if s.count >= self.max_pending {
            evict_oldest(s);
            self.stats.evicted += 1;
        }
        self.insertion += 1;
        s.order.push_back((id.clone(), self.insertion));
        if s.order.len() > 4 * self.max_pending.max(16) {
            let by_id = &s.by_id;
            s.order.retain(|(id, ins)| {
                by_id
                    .get(id)
                    .is_some_and(|l| l.iter().any(|p| p.insertion == *ins))
            });
        }
        s.by_id.entry(id).or_default().push(Pending {
            requester,
            ts_ns,
            seq,
            method: msg.method.clone(),
            tool: msg.tool.clone(),
            resource: msg.resource.clone(),
            prompt: msg.prompt.clone(),
            logical_id: logical_id.clone(),
            args_hash,
            insertion: self.insertion,
        });
        s.count += 1;
        logical_id
    }

    /// Pairs a response or error sent to `recipient` (0 when unknown).
    pub fn response(&mut self, session: u64, recipient: u32, msg: &Message) -> Option<Pending> {
        let found = self.try_response(session, recipient, msg);
        if found.is_none() {
            self.unmatched();
        }
        found
    }

    /// [`Pairer::response`], not counting a response that finds no request
    /// as unmatched: the caller may hold it and try again once its request
    /// is seen (see [`Pairer::unmatched`]).
    pub fn try_response(&mut self, session: u64, recipient: u32, msg: &Message) -> Option<Pending> {
        let id = msg.id.as_ref()?;
        let s = self.sessions.get_mut(&session)?;
        let found = take(s, id, recipient)?;
        if msg.result_type.as_deref() == Some("input_required") {
            let logical = found.logical_id.clone().unwrap_or_else(|| id.clone());
            s.awaiting_input.insert(
                (found.method.clone().unwrap_or_default(), found.tool.clone()),
                logical,
            );
        }
        Some(found)
    }

    /// Counts a response that found no request (after [`Pairer::try_response`]).
    pub fn unmatched(&mut self) {
        self.stats.unmatched += 1;
    }

    /// notifications/cancelled: the request will get no response.
    pub fn cancel(&mut self, session: u64, id: &RpcId) {
        if let Some(s) = self.sessions.get_mut(&session) {
            if take(s, id, 0).is_some() {
                self.stats.cancelled += 1;
            }
        }
    }

    /// The session ended; whatever is pending stays unanswered.
    pub fn end_session(&mut self, session: u64) {
        if let Some(s) = self.sessions.remove(&session) {
            self.stats.unanswered += s.count as u64;
        }
    }
}

fn take(s: &mut SessionPending, id: &RpcId, recipient: u32) -> Option<Pending> {
    let list = s.by_id.get_mut(id)?;
    let idx = list
        .iter()
        .position(|p| recipient == 0 || p.requester == 0 || p.requester == recipient)
        .unwrap_or(0);
    let p = list.remove(idx);
    if list.is_empty() {
        s.by_id.remove(id);
    }
    s.count -= 1;
    Some(p)
}

fn evict_oldest(s: &mut SessionPending) {
    while let Some((id, insertion)) = s.order.pop_front() {
        let Some(list) = s.by_id.get_mut(&id) else {
            continue;
        };
        let Some(i) = list.iter().position(|p| p.insertion == insertion) else {
            continue;
        };
        list.remove(i);
        if list.is_empty() {
            s.by_id.remove(&id);
        }
        s.count -= 1;
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse;

    fn msg(s: &str) -> Message {
        parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn pairs_per_session_not_by_id_alone() {
        let mut p = Pairer::new(16);
        let req = msg(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#);
        p.request(1, 100, &req, 10, 1, None);
        p.request(2, 200, &req, 20, 2, None);
        let resp = msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        let a = p.response(2, 200, &resp).unwrap();
        assert_eq!((a.ts_ns, a.tool.as_deref()), (20, Some("echo")));
        let b = p.response(1, 100, &resp).unwrap();
        assert_eq!(b.ts_ns, 10);
        assert!(p.response(1, 100, &resp).is_none());
        assert_eq!(p.stats.unmatched, 1);
    }

    #[test]
    fn same_id_both_directions_out_of_order() {
        let mut p = Pairer::new(16);
        p.request(
            1,
            100,
            &msg(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}"#),
            1,
            1,
            None,
        );
        p.request(
            1,
            200,
            &msg(r#"{"jsonrpc":"2.0","id":1,"method":"roots/list"}"#),
            2,
            2,
            None,
        );
        let resp = msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        assert_eq!(
            p.response(1, 200, &resp).unwrap().method.as_deref(),
            Some("roots/list")
        );
        assert_eq!(
            p.response(1, 100, &resp).unwrap().method.as_deref(),
            Some("tools/call")
        );
    }

    #[test]
    fn bound_evicts_and_counts() {
        let mut p = Pairer::new(2);
        for i in 0..3 {
            p.request(
                1,
                1,
                &msg(&format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"ping"}}"#)),
                i,
                i,
                None,
            );
        }
        assert_eq!((p.stats.evicted, p.pending()), (1, 2));
        assert!(p
            .response(1, 1, &msg(r#"{"jsonrpc":"2.0","id":0,"result":{}}"#))
            .is_none());
        p.cancel(1, &RpcId::Num(1));
        assert_eq!(p.stats.cancelled, 1);
        p.end_session(1);
        assert_eq!(p.stats.unanswered, 1);
    }

    #[test]
    fn a_flood_of_unanswered_requests_evicts_oldest_first_in_constant_time() {
        let mut p = Pairer::new(1000);
        for i in 0..200_000i64 {
            p.request(
                1,
                1,
                &msg(&format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"ping"}}"#)),
                i as u64,
                i as u64,
                None,
            );
            if i % 3 == 0 {
                p.response(
                    1,
                    1,
                    &msg(&format!(r#"{{"jsonrpc":"2.0","id":{i},"result":{{}}}}"#)),
                );
            }
        }
        assert_eq!(p.pending(), 1000);
        // The newest survive, the oldest went.
        assert!(p
            .response(1, 1, &msg(r#"{"jsonrpc":"2.0","id":199999,"result":{}}"#))
            .is_some());
        assert!(p
            .response(1, 1, &msg(r#"{"jsonrpc":"2.0","id":1000,"result":{}}"#))
            .is_none());
    }

    #[test]
    fn input_required_retry_links_logical_id() {
        let mut p = Pairer::new(16);
        p.request(
            1,
            1,
            &msg(r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"book"}}"#),
            1,
            1,
            None,
        );
        p.response(1, 1, &msg(r#"{"jsonrpc":"2.0","id":5,"result":{"resultType":"input_required","requestState":"s"}}"#));
        let retry = msg(
            r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"book","requestState":"s","inputResponses":{}}}"#,
        );
        assert_eq!(p.request(1, 1, &retry, 2, 2, None), Some(RpcId::Num(5)));
        assert_eq!(
            p.response(
                1,
                1,
                &msg(r#"{"jsonrpc":"2.0","id":6,"result":{"resultType":"complete"}}"#)
            )
            .unwrap()
            .logical_id,
            Some(RpcId::Num(5))
        );
    }
}
