// Package membership runs gossip (hashicorp/memberlist) over the node's
// shared port: joining through seed addresses, node metadata and member
// states, for the reconcile loop that keeps the raft configuration in step
// with the nodes that are alive.
//
// Gossip streams arrive through the node's first-byte demux and gossip
// packets on a UDP socket bound to the same port number; see
// Transport. Gossip wraps memberlist with what the node needs on top: a
// compact, versioned Meta per node (with a Leaving flag, because memberlist
// cannot tell a graceful leave from a crash), a member table with states,
// id-conflict reporting, a join loop with backoff, optional encryption, and
// reconnection of failed members so partitions heal.
//
// Nodes of different clusters keep out of each other's gossip: Config.Admit
// (the node's rule, by cluster id) decides which nodes memberlist takes in,
// and a join through nodes it refuses all fails.
//
// Gossip alone never decides quorum questions: it reports who seems alive;
// raft decides.
package membership
