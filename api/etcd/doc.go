// Package etcd serves etcd's v3 API (etcdserverpb.KV, Watch, Lease,
// Cluster, Maintenance and Auth, under etcd's own wire names from
// go.etcd.io/etcd/api/v3) on the node's gRPC server, next to kvstore.v1.
//
// One store, two faces: every call is translated into a kvstore.v1 request
// and served by the same handlers (api.Services), so validation, limits,
// forwarding to the leader and waiting out elections happen once, in
// package api. This package only translates, adds what etcd's API has and
// kvstore.v1 has not (sorting and revision filters of a range, ignore_value
// and ignore_lease by a compare-and-swap, unlimited ranges by paging at one
// revision), and answers errors with the exact status messages of etcd's
// rpctypes, which etcd's clients match on.
//
// What must hold:
//   - A watch stream serves all its watches from one goroutine that sends
//     and one that receives, however many watches it carries: the store's
//     watchers wake the stream (storage.WatchSpec.Wake), never a goroutine
//     of their own. Events of one watch go out in revision order, after
//     its created response.
//   - A progress response (watch_id -1 for a progress request, the watch's
//     id for progress_notify) at revision R is sent only when every
//     watch it speaks for has sent all its events up to R.
//   - A watch stream opened with etcd's require-leader metadata ends with
//     "etcdserver: no leader" within Options.LeaderCheck of its node losing
//     its leader, as etcd's do: its client then moves to another member.
//   - Member and cluster ids are 64-bit hashes of kvstore's string ids, the
//     same on every node and in every response.
//   - Revisions are kvstore's (raft indexes): they increase with every
//     write but have gaps.
package etcd
