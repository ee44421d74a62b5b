// Package statuspage renders a node's view of its cluster as one HTML page
// for a person with a browser: the members with their address, raft
// suffrage and gossip state, which one leads, and for each what its own
// /metrics says (term, commit and applied index, lag behind the leader,
// revision, keys, size on disk, requests per second and their mean
// latency); and the serving node's own replicas of data groups (id, name,
// role, the leader it knows, applied index), which it knows without a
// scrape.
//
// What must hold:
//   - The page is plain server-rendered HTML (html/template escapes every
//     value) with inline CSS and a <meta http-equiv=refresh>: no script,
//     no external asset, so it works on a machine without internet.
//   - A member that does not answer is shown as unreachable, never hides
//     the others: each scrape has its own short deadline, all run at once.
//   - Rates come from two scrapes by this page of the same member (the
//     previous refresh and this one), so the first view shows none.
package statuspage
