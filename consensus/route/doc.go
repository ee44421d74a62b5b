// Package route is the pure routing decision of a cluster that serves its
// key space with many raft groups (issue 37): the key spans a request
// touches, and the one group that owns them all in a range table
// (consensus/ranges). It runs nothing: no raft, no network; the server
// calls it before it forwards a request to a replica of the group.
//
// What holds:
//
//  1. Spans are half-open, [Start, End), End nil for +inf, and never
//     empty: a request form that touches no key (an etcd range whose
//     range_end is at or before its key, a compare over such a range)
//     yields no span rather than an empty one.
//  2. The range forms are translated as etcd and kvstore.v1 serve them
//     (consensus.span, storage.rangeBounds, etcd's mvcc): an empty
//     range_end is the single key k, the span [k, k+"\x00"); range_end
//     "\x00" is every key from key on, [key, +inf) (so key "\x00" with
//     range_end "\x00" is every key: no stored key sorts below "\x00",
//     the empty key being refused); otherwise [key, range_end). A
//     kvstore.v1 prefix p is [p, PrefixEnd(p)), +inf when p is empty or
//     all 0xff, and wins over range_end as it does in consensus.
//  3. A request is routed whole or refused whole: Route returns the one
//     group owning every span, or a *CrossGroupError (FailedPrecondition,
//     see Code) naming every group the request touches and the parts of
//     its spans in each. Whether a request is refused depends on its
//     keys only, never on the data: a Range over two groups is refused
//     even when its limit would be met in the first.
//  4. A request that touches no key (an empty Txn, a Compact) routes to
//     the meta group, so a cluster that never creates a group routes
//     everything to the meta group, as before.
//
// Decisions for what carries no key, or more than keys:
//
//   - A Txn touches the spans of its compares and of every operation of
//     both branches, nested txns included: which branch runs is known
//     only in the owning group, so both must lie in it.
//   - prev_kv (Put, Delete, Watch) reads the same keys in the same group
//     and adds nothing; a revision (Get, Range, Watch's start_revision)
//     is one of the routed group's revisions.
//   - Compact carries a revision and no key. Revisions are per group, so
//     a Compact can only mean one group's; with no group in the request,
//     it is the meta group's (Spans returns none). Data groups need a
//     compaction of their own (a group in the request, or compaction run
//     by each group).
//   - Put's lease adds no span: the key is attached in the group owning
//     it. "A lease whose keys lie in two groups" is a fact of the
//     lessor's state, not of the request, so the owning group's replica
//     refuses the attach; Route cannot see it. Lease calls (Grant,
//     Revoke, KeepAlive, TimeToLive) carry no key and are not routed by
//     key (ErrNotRouted).
//   - An etcd watch stream's cancel and progress requests name no key:
//     they go to the groups of the stream's own watches (ErrNotRouted).
//   - kvstore.v1 has no locks; etcd's lock and election services are not
//     served. Auth, cluster and maintenance calls are the node's or the
//     meta group's and are not routed by key.
package route
