// Package ranges is the range table of a cluster that serves its key space
// with many raft groups, and the pure decisions taken over it: routing a
// key to its group, carving a range out into a new group or merging it
// back, and placing each group's replicas over the nodes. It runs nothing:
// no raft, no network, no storage. The meta group applies the table from
// its log; the node's router, the data groups and the meta leader's mover
// and placer act on it. What follows states the design and the protocol
// as the invariants the code and its callers keep.
//
// Built so far (consensus/groups.go, node/groups.go, node/groupmove.go):
// creating a group over the meta group's keys, with the copy made at the
// freeze rather than before it (steps 1 and 3 to 6 below; writes to the
// range wait for the copy), moving a group's replicas, and moving groups
// off nodes that left. Merging, and carving a range out of a data group,
// are not built: the copy of keys into a group with revisions of its own
// below theirs needs the revision jump of "Revisions across a move".
//
// # The range table
//
//  1. The table is a list of spans [Start, End), ordered by Start,
//     non-overlapping and without gaps, covering the whole key space: the
//     first starts at "", each starts where the one before ends, and only
//     the last has End nil, which stands for +inf. No span is empty.
//  2. Each span is owned by exactly one group, which the table lists. A
//     group may own several spans (carving "events" out of the middle of
//     the meta group's span leaves the meta group two), and two adjacent
//     spans never have the same owner: they are coalesced into one.
//  3. A group has an id (allocated from Table.NextGroup, never reused), a
//     unique name, its replicas (the nodes hosting it: Voters and
//     NonVoters catching up), an optional Target set of nodes an operator
//     pinned it to, and an Epoch. The Epoch is the table Version at which
//     anything in the group's entry (name, spans, replicas, target) last
//     changed. The table's Version grows by one on every change. So epochs
//     only grow, and a larger epoch is the newer entry.
//  4. Group 0, "meta", is today's raft group. It exists always, is never
//     merged or moved by this package (its membership is the reconcile
//     loop's, node/reconcile_plan.go) and owns every span not given to a
//     data group: a cluster that never creates a group has the one-span
//     table of New and behaves as before.
//  5. A data group owns at least one span, except the new group of a
//     pending create, which owns none until its switch: a create never
//     takes all a data group owns (ErrEmptiesGroup; merge it instead).
//     The meta group may own none.
//
// The table is the meta group's replicated state: every change is one
// meta log entry holding the operation, applied with the functions of this
// package on every node (voters and non-voters of the meta group alike),
// so all nodes hold the same table at the same meta index. The whole table
// is also marshalled (Marshal, a version byte first) into the meta
// group's snapshots.
//
// # Routing
//
//  1. A node routes a request by its key (Lookup) or its key span
//     (LookupSpan) in the table it has applied, and sends it to a replica
//     of the owning group with the group's id and the Epoch it routed with.
//  2. A replica checks the route against its own copy of the table before
//     serving. An older epoch, a key its group does not own, or a group
//     since merged away is refused with a "stale route" error naming the
//     newer epoch (for a group merged away, the replica's table version);
//     the caller waits until its own table has reached it, routes again
//     and retries: epochs are table versions, so one number says how far. A newer epoch than
//     the replica's means the replica's table lags: it waits (bounded by
//     the request's context) until it has applied that far.
//  3. A request whose keys lie in two groups (a Txn, a Range or Delete
//     over two groups' spans, a watch over two groups, a lease whose keys
//     lie in two groups) is refused whole with FailedPrecondition naming
//     the groups (CrossGroupError), never served in part.
//  4. Each group has its own revision counter. A response header names the
//     group whose revision it carries; a client comparing revisions
//     compares them within one group.
//
// # Data groups
//
// A node hosting a replica of a data group runs one hashicorp/raft
// instance for it, with its own raft log and its own Badger store in a
// directory of its own named by the group id: a group's state is a
// storage.KV with its own revisions, checkpoints and compaction, and
// dropping it is deleting the directory. Each group's stores take a
// fraction of the node's file and cache sizes (storage.GroupShare), so
// that disk and memory grow by little with each group. Raft streams of
// data groups share the node's one port on a path of their own beside the
// meta group's: a stream's header carries the group id. A node starts a group's instance when its table
// lists the node among the group's replicas, and stops it, deleting its
// log and state, once the group's entry no longer lists it (or the group
// is gone) and the group's raft configuration no longer holds it. A node
// hosts at most MaxGroupsPerNode data group replicas; placement never
// exceeds it.
//
// # Moving a range between groups
//
// Create, merge and split are one protocol, a transfer of spans from a
// source group to a target group, driven by the meta leader's mover. Move
// (new replicas for a group) is not a transfer: it sets the group's
// Target and the placer's steps (below) change the replicas one at a
// time. The transfer's steps, each followed by what a crash of any node
// at that step (a replica, the meta leader, the source's or the target's
// leader) leaves behind:
//
//  1. Begin: one meta entry (BeginCreate or BeginMerge) records the
//     transfer in the table, with an id from Table.NextTransfer; a create
//     also adds the new group, owning no span. A group takes part in at
//     most one transfer. Routing is unchanged: the source owns the spans.
//     Crash: before the entry commits, nothing happened; after, the next
//     meta leader finds the transfer in the table and resumes at step 2,
//     or aborts it (step 7).
//  2. Start and copy: the target's replicas start (a new group bootstraps
//     its raft configuration from the table entry), and the target's
//     leader copies the spans from a source replica at a revision R0 of
//     the source (a linearizable read), into a staging area of its own
//     state that serves nothing. Copied keys keep their create and mod
//     revisions, versions and leases. Crash: a copy is restarted from
//     scratch; the staging area is only ever dropped or made whole.
//     The source still serves the spans alone.
//  3. Catch up: the target tails the source's changes to the spans from
//     R0+1 (a watch), applying them to the staging area, until it lags by
//     little: the freeze waits for that, so that the cut-over (step 4 to
//     step 6, while writes to the spans wait) is short whatever the
//     spans' size; the target is under 1 s for 1,000,000 keys. Crash: the
//     tail resumes from the last revision the target applied. The source
//     still serves the spans alone.
//  4. Freeze: the mover proposes "freeze transfer T" into the source's own
//     log; it applies at the source revision R. From then on the source
//     refuses every read, write and watch of the spans with stale route
//     naming T (the router waits for T to end in its table and retries:
//     this wait is the cut-over's write pause), and ends watches of them
//     after delivering R. The source keeps the freeze (T, the spans, R)
//     in its state, so a later mover learns R from it, and its lessor
//     leaves the leases of the spans alone from then on: the target
//     takes them at step 5 with the time they have left. The source
//     refuses the freeze, and the mover aborts, when a lease has keys
//     both inside and outside the spans.
//     Crash: the freeze is in the source's log or not; if not, step 4
//     is retried. A frozen source never unfreezes on its own: only the
//     end of T in the table (step 7) does that, so it cannot serve again
//     once the target may have.
//  5. Ready: the target applies the tail up to R, the freeze's revision
//     (the tail ends there), and commits "ready T at R" in its own log:
//     the staging area becomes the spans' state and the target's revision
//     becomes max(its revision, R)+1, so any later write to the spans has
//     a revision above every revision the source gave them, and a
//     revision comparison made against a key read before the move still
//     holds (its mod revision is unchanged). Reads of the spans at a
//     revision below the ready revision are refused as compacted: history
//     is not moved. Crash: ready is in the target's log or not; if not,
//     step 5 is retried (its catch-up is idempotent, by revision).
//  6. Switch: the mover commits Switch(T) in the meta group, one entry
//     that hands the spans to the target (and, for a merge, deletes the
//     source group), bumping the epochs of both. It is conditional on T
//     being pending: a retried or duplicated switch, or one after an
//     abort, is a no-op (ErrNoTransfer). T pins the spans' ownership while
//     pending (no other transfer may touch its groups), so this is the
//     condition on the spans' epoch. The target serves the spans once its
//     node has applied the switch and the target has applied "ready T".
//     Crash: the switch committed or not; a new meta leader finds T
//     pending, asks the target whether it is ready at the source's freeze
//     revision, and switches or aborts. Nothing is served twice: the
//     source serves nothing of the spans since step 4, the target nothing
//     before step 6. Nothing acknowledged is lost: every write the source
//     acknowledged has a revision at most R and is in the target's state
//     by step 5.
//  7. Abort: a transfer that stalls (a step failing past the mover's
//     deadline) is rolled back by one meta entry, Abort(T), conditional
//     on T pending as the switch is: exactly one of them commits. The
//     source's leader, seeing T gone from the table with the spans still
//     its own, commits "unfreeze T" in the source's log and serves the
//     spans again; a create's new group is deleted and its replicas stop;
//     a merge's target drops what it staged. Crash: until the unfreeze
//     commits the spans wait, served by no one; any source leader
//     retries it.
//  8. Drop: after the switch the source's leader commits "drop T" in the
//     source's log, deleting the spans' keys; for a merge the whole source
//     group is gone, and its replicas stop and delete their state. Crash:
//     the drop is retried by the next source leader; the keys it has not
//     dropped yet are frozen and so never served.
//
// Create is Begin then Switch of a create; Merge is Begin then Switch of a
// merge (the functions of those names compute the end result in one
// step, for tests and for a cluster with no data yet).
//
// # Placement
//
// The meta leader places data group replicas and leaders, as PD does for
// TiKV and raft-autopilot for one group: Plan computes the steps from the
// table, the nodes that are alive and the groups' leaders, and changes
// nothing; an executor applies them in order and stops at the first that
// fails. Each replica step changes the group's raft configuration and the
// table: a step that adds a host commits in the table first (so the node
// starts the group's instance), one that removes a host commits in raft
// first (so the node stops only once raft dropped it); a new meta leader
// first brings the table in line with each group's raft configuration.
// The rules:
//
//  1. A new group's replicas go to the alive nodes with the fewest data
//     replicas, ties by node id (Place), never past MaxGroupsPerNode (the
//     cap binds placement's own choices, not an operator's Target).
//  2. A group wants its Target's nodes, or else as many replicas as the
//     cluster's replica count. It keeps its alive Target nodes, then its
//     alive voters, then its alive non-voters, and fills up to what it
//     wants as in rule 1, adding each new replica as a non-voter. A
//     non-voter is promoted only once it is reported caught up. Another
//     replica (a dead one, one outside the Target, one too many) is
//     removed only once the group has all it wants as voters: a dead
//     voter with no node to replace it on stays. Dead non-voters not
//     kept go at once.
//  3. No step leaves a group with fewer than a quorum of its voters alive,
//     and a group without one gets no step at all (raft could not commit
//     it).
//  4. Leaders spread: no node leads more than ceil(groups/alive nodes)
//     groups while another voter of one of its groups leads fewer;
//     TransferLeadership moves the surplus. The meta group's leader counts
//     on its node but is not moved by Plan.
package ranges
