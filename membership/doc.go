// Package membership will run gossip (hashicorp/memberlist) over the node's
// shared port: joining through seed addresses, node metadata and events, for
// the reconcile loop that keeps the raft configuration in step with the
// nodes that are alive. A single node does not need it yet.
package membership
