// Package tlsconf holds who a node trusts with what when TLS is on, and
// builds the crypto/tls configurations that enforce it: the one the node's
// port serves with, and the one a node dials other nodes with. It also makes
// development certificates (certs.go) for kvctl certs and tests.
//
// Two trust domains share the one port, and the client's ALPN offer picks
// one at the handshake, before any byte of a protocol is read:
//
//   - Peers. A ClientHello that offers any of our own protocol names
//     (ALPNRaft, ALPNGroupRaft, ALPNGossip, ALPNForward, ALPNPeer) gets
//     the peer configuration: the node shows its peer certificate,
//     requires the dialer's certificate, verifies it against the peer CA
//     (and only that CA), and requires it to be a node certificate, one
//     usable for both server and client authentication (a client
//     certificate, made for client authentication only, never passes,
//     even from the same CA).
//     Only our protocol names can be negotiated there, and session
//     resumption is off, so that every peer connection shows a verified
//     chain. Raft, gossip streams, forwarded writes and the peer services
//     (api's PeerService: read index, state copies) are reached only over
//     such a connection.
//   - Clients. Any other ClientHello (h2, http/1.1, or no ALPN) gets the
//     client configuration: the node's certificate; a client certificate
//     is verified against the client CA when given, and required with
//     ClientCertAuth. Only h2 and http/1.1 can be negotiated, so no client
//     connection carries a peer protocol.
//
// When a node dials another, it verifies the other's certificate against
// the peer CA and the address dialed, and offers exactly one protocol name,
// which the node dialed must have chosen.
//
// Files are read again when their modification time or size changes, at
// the next handshake; a file that fails to load leaves the last good one in
// use (and says so in the log), so a certificate being replaced never stops
// a node. AutoTLS makes a self-signed certificate at start: clients cannot
// verify it, and the node trusts it alone as a peer, so such a node forms
// no cluster with another unless peer files are given.
package tlsconf
