package node

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"google.golang.org/protobuf/proto"

	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
)

// The handshake. A node opening a raft, gossip or forwarding connection to
// another writes the path's byte (MuxByte*), then a PeerHello about itself,
// length-prefixed with a uvarint; the node dialed answers with its own
// PeerHello, whose refusal is set if it will not talk to the dialer (then
// it closes the connection). The dialer checks the answer by the same rule
// (identity.admit). Only then does either side hand the connection to raft,
// gossip or the forwarder; on the data groups' raft path the dialer first
// names the group (groupstreams.go). The Mux bounds the whole exchange by
// HandshakeTimeout.
//
// A dialer that means one node (raft does: raftTarget names the server in
// the address raft dials) says which in the hello, and both sides check
// it: the node dialed refuses a hello meant for another, and the dialer
// refuses an answer from another. An address is not an identity: it can
// pass from one node to another.

const (
	// DefaultHandshakeTimeout bounds a connection's handshake, from its
	// first byte on.
	DefaultHandshakeTimeout = 5 * time.Second
	// maxHelloBytes bounds a PeerHello: ids, an address and a reason.
	maxHelloBytes = 4 << 10
)

// writeHello writes h as one length-prefixed frame, after prefix.
func writeHello(w io.Writer, prefix []byte, h *peerv1.PeerHello) error {
	b, err := proto.Marshal(h)
	if err != nil {
		return err
	}
	buf := binary.AppendUvarint(prefix, uint64(len(b)))
	_, err = w.Write(append(buf, b...))
	return err
}

// readHello reads one PeerHello frame from r. It reads no byte past the
// frame.
func readHello(r io.Reader) (*peerv1.PeerHello, error) {
	n, err := binary.ReadUvarint(byteReader{r})
	if err != nil {
		return nil, fmt.Errorf("read handshake: %w", err)
	}
	if n > maxHelloBytes {
		return nil, fmt.Errorf("read handshake: %d bytes, more than %d", n, maxHelloBytes)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("read handshake: %w", err)
	}
	h := new(peerv1.PeerHello)
	if err := proto.Unmarshal(b, h); err != nil {
		return nil, fmt.Errorf("read handshake: %w", err)
	}
	return h, nil
}

// byteReader reads one byte at a time, so that reading the length takes no
// byte of what follows.
type byteReader struct{ r io.Reader }

func (b byteReader) ReadByte() (byte, error) {
	var c [1]byte
	_, err := io.ReadFull(b.r, c[:])
	return c[0], err
}

var _ io.ByteReader = byteReader{}

func peerOf(h *peerv1.PeerHello) peer {
	return peer{clusterID: h.GetClusterId(), nodeID: h.GetNodeId(), addr: h.GetAddress(), hasState: h.GetHasRaftState()}
}

// targetSep joins a server's address and id in a raft target; neither an
// address nor a node id holds it.
const targetSep = "/"

// raftTarget is the address raft's transport dials for server id at addr:
// the dialer connects to addr and tells the node there that it means id.
func raftTarget(addr, id string) raft.ServerAddress {
	return raft.ServerAddress(addr + targetSep + id)
}

// splitTarget splits a raft target into the address to dial and the node
// meant there ("" for an address alone).
func splitTarget(target string) (addr, id string) {
	if i := strings.LastIndex(target, targetSep); i >= 0 {
		return target[:i], target[i+len(targetSep):]
	}
	return target, ""
}

// wrongNodeError is the answer of a node other than the one meant.
type wrongNodeError struct{ msg string }

func (e *wrongNodeError) Error() string { return e.msg }

// hello describes this node.
func (i *identity) hello() *peerv1.PeerHello {
	return &peerv1.PeerHello{ClusterId: i.ID(), NodeId: i.nodeID, Address: i.addr, HasRaftState: i.hasState()}
}

// pathName names a path in logs.
func pathName(path byte) string {
	switch path {
	case MuxByteRaft:
		return "raft"
	case MuxByteGroupRaft:
		return "group raft"
	case MuxByteGossip:
		return "gossip"
	case MuxByteForward:
		return "forward"
	case MuxBytePeer:
		return "peer"
	}
	return fmt.Sprintf("0x%02x", path)
}

// adopts says whether a handshake on path lets a node without a cluster id
// take the other's (identity.admit's adopt): on raft's paths, the meta
// group's and the data groups', a node is being added to a cluster.
func adopts(path byte) bool { return path == MuxByteRaft || path == MuxByteGroupRaft }

// peerConn is a connection past its handshake, with what the other node
// said of itself.
type peerConn struct {
	net.Conn
	peer peer
}

// PeerID is the other node's id (api.ForwardServer asks).
func (c *peerConn) PeerID() string { return c.peer.nodeID }

// NetConn is the connection underneath.
func (c *peerConn) NetConn() net.Conn { return c.Conn }

// accept is the Mux's handshake, on the node dialed: it reads the dialer's
// hello, decides, answers, and returns the connection for the path.
func (i *identity) accept(conn net.Conn, path byte) (net.Conn, error) {
	h, err := readHello(conn)
	if err != nil {
		return nil, err
	}
	p := peerOf(h)
	reply := i.hello()
	if to := h.GetToNodeId(); to != "" && to != i.nodeID {
		// Before admit: a node meant for another must not adopt the
		// dialer's cluster id either.
		err := &wrongNodeError{fmt.Sprintf("%s meant node %s, and this is node %s", p.nodeID, to, i.nodeID)}
		reply.Refusal = err.Error()
		if werr := writeHello(conn, nil, reply); werr != nil {
			return nil, fmt.Errorf("answer handshake: %w", werr)
		}
		return nil, err
	}
	refusal := i.admit(p, adopts(path))
	if refusal != nil {
		reply.Refusal = refusal.Error()
		// Logged before the answer, so that the log line is there once
		// the dialer has its answer.
		i.refused(pathName(path), p, refusal)
	}
	if err := writeHello(conn, nil, reply); err != nil {
		return nil, fmt.Errorf("answer handshake: %w", err)
	}
	if refusal != nil {
		return nil, refusal
	}
	return &peerConn{Conn: conn, peer: p}, nil
}

// dialer returns the function that opens path's connections to other
// nodes, through dial: it writes the path's byte and the handshake, and
// returns the connection once both sides agreed to talk.
func (i *identity) dialer(path byte, dial func(ctx context.Context, network, address string) (net.Conn, error)) func(ctx context.Context, network, address string) (net.Conn, error) {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		address, to := splitTarget(address)
		conn, err := dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		p, err := i.handshake(ctx, conn, path, to)
		if err != nil {
			conn.Close()
			var oc *otherClusterError
			if errors.As(err, &oc) {
				i.refusedBy(pathName(path), p, err)
			}
			return nil, err
		}
		return &peerConn{Conn: conn, peer: p}, nil
	}
}

// handshake runs the dialer's side of the handshake on conn; to is the node
// meant ("" any).
func (i *identity) handshake(ctx context.Context, conn net.Conn, path byte, to string) (peer, error) {
	deadline := time.Now().Add(DefaultHandshakeTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return peer{}, err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	hello := i.hello()
	hello.ToNodeId = to
	if err := writeHello(conn, []byte{path}, hello); err != nil {
		return peer{}, fmt.Errorf("%s handshake with %s: %w", pathName(path), conn.RemoteAddr(), err)
	}
	h, err := readHello(conn)
	if err != nil {
		return peer{}, fmt.Errorf("%s handshake with %s: %w", pathName(path), conn.RemoteAddr(), err)
	}
	p := peerOf(h)
	if to != "" && p.nodeID != to {
		return p, &wrongNodeError{fmt.Sprintf("%s handshake: %s answers as node %s, not %s: the address passed to another node", pathName(path), conn.RemoteAddr(), p.nodeID, to)}
	}
	if r := h.GetRefusal(); r != "" {
		return p, &otherClusterError{fmt.Sprintf("%s at %s refused %s: %s", p.nodeID, conn.RemoteAddr(), i.nodeID, r)}
	}
	if err := i.admit(p, adopts(path)); err != nil {
		return p, err
	}
	if !stop() {
		return p, ctx.Err()
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return p, err
	}
	return p, nil
}
