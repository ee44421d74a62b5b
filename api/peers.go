package api

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/consensus/ranges"
	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
	"github.com/kvstore/kvstore/proto/kvstore/peer/v1/peerv1connect"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
	"github.com/kvstore/kvstore/storage"
)

// forwardedHeader marks a request one node sent on to another, so that it
// is never sent on twice (two nodes that each think the other leads would
// otherwise bounce it until the deadline).
const forwardedHeader = "Kvstore-Forwarded-By"

// ClusterIDHeader carries, on every call a node makes to another, the
// caller's cluster id; a node of another cluster refuses the call with
// FailedPrecondition (callRules). Clients send none.
const ClusterIDHeader = "Kvstore-Cluster-Id"

// Peers is how a node calls other nodes on their shared port: writes
// forwarded to the leader and read index requests. Calls use the Connect
// client speaking gRPC over one multiplexed HTTP/2 (h2c) connection per
// peer, which the peer serves with grpc-go (see NewGRPCServer).
type Peers struct {
	self string
	// forwarded counts writes sent to the leader (ForwardedWrites).
	forwarded atomic.Uint64
	hc        *http.Client
	// peerHC carries the peer services' calls (PeerOptions.DialPeer).
	peerHC *http.Client
	// dialForward opens forward connections; nil: writes cannot be
	// forwarded in batches (forwarder.do fails them).
	dialForward func(ctx context.Context, addr string) (net.Conn, error)
	// clientOpts go with every client: the cluster id header.
	clientOpts []connect.ClientOption
	// closed ends the forward streams when Close is called; streams
	// counts the forwarders serving one (added to under mu, before closed).
	closed  context.Context
	close   context.CancelFunc
	streams sync.WaitGroup

	mu      sync.Mutex
	kv      map[string]kvstorev1connect.KVServiceClient
	peer    map[string]peerv1connect.PeerServiceClient
	cluster map[string]kvstorev1connect.ClusterServiceClient
	lease   map[string]kvstorev1connect.LeaseServiceClient
	auth    map[string]kvstorev1connect.AuthServiceClient
	fwd     map[string]*forwarder
}

// DialFunc opens a TCP connection; tests swap it to cut links.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// PeerOptions configure Peers.
type PeerOptions struct {
	// Dial opens the connections of calls to other nodes (HTTP/2 without
	// TLS, on their shared port). Nil: net.Dialer.
	Dial DialFunc
	// DialForward opens a connection carrying forwarded writes to the node
	// at addr, ready for its frames (forwardconn.go): the node's port
	// routes it by its first byte and a handshake. A node that forwards
	// writes needs it; nil only on a node that never forwards (tools,
	// tests of other calls).
	DialForward func(ctx context.Context, addr string) (net.Conn, error)
	// ClusterID is this node's cluster id, sent with every call as
	// ClusterIDHeader. Nil: none.
	ClusterID func() string
	// DialPeer opens the connections of the peer services' calls (read
	// index, state copies), which a node serves to other nodes alone: its
	// port routes them by their first byte and a handshake. Nil: Dial
	// (a server of the peer services on an address of its own, in tests).
	DialPeer DialFunc
}

// NewPeers returns a client for other nodes. self is this node's id, sent
// with forwarded requests.
func NewPeers(self string, opts PeerOptions) *Peers {
	dial := opts.Dial
	if dial == nil {
		dial = (&net.Dialer{Timeout: 5 * time.Second}).DialContext
	}
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{
		DialContext:     dial,
		Protocols:       protocols,
		IdleConnTimeout: 2 * time.Minute,
		HTTP2:           &http.HTTP2Config{PingTimeout: 5 * time.Second, SendPingTimeout: 15 * time.Second},
	}
	peerTr := tr.Clone()
	if opts.DialPeer != nil {
		peerTr.DialContext = opts.DialPeer
	}
	closed, close := context.WithCancel(context.Background())
	p := &Peers{
		self:        self,
		hc:          &http.Client{Transport: tr},
		peerHC:      &http.Client{Transport: peerTr},
		dialForward: opts.DialForward,
		closed:      closed,
		close:       close,
		kv:          make(map[string]kvstorev1connect.KVServiceClient),
		peer:        make(map[string]peerv1connect.PeerServiceClient),
		cluster:     make(map[string]kvstorev1connect.ClusterServiceClient),
		lease:       make(map[string]kvstorev1connect.LeaseServiceClient),
		auth:        make(map[string]kvstorev1connect.AuthServiceClient),
		fwd:         make(map[string]*forwarder),
	}
	p.clientOpts = append(p.clientOpts, connect.WithInterceptors(clusterIDInterceptor{id: opts.ClusterID, self: self}))
	return p
}

// Close ends the forward streams and drops idle connections.
func (p *Peers) Close() {
	p.mu.Lock()
	p.close()
	p.mu.Unlock()
	// A stream ends a moment after its context: wait for that (briefly),
	// or its connection is not idle yet and stays open, and the leader's
	// graceful stop waits for it.
	ended := make(chan struct{})
	go func() {
		p.streams.Wait()
		close(ended)
	}()
	select {
	case <-ended:
	case <-time.After(time.Second):
	}
	p.hc.CloseIdleConnections()
	p.peerHC.CloseIdleConnections()
}

// startStream counts a forwarder about to serve a stream; false once
// Close was called.
func (p *Peers) startStream() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Err() != nil {
		return false
	}
	p.streams.Add(1)
	return true
}

// cachedClient returns the client of addr in m, made by mk on first use:
// one client per peer, sharing p's HTTP/2 connections.
func cachedClient[C any](p *Peers, m map[string]C, addr string, mk func(connect.HTTPClient, string, ...connect.ClientOption) C, opts ...connect.ClientOption) C {
	return cachedClientOn(p, p.hc, m, addr, mk, opts...)
}

func cachedClientOn[C any](p *Peers, hc *http.Client, m map[string]C, addr string, mk func(connect.HTTPClient, string, ...connect.ClientOption) C, opts ...connect.ClientOption) C {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := m[addr]
	if !ok {
		c = mk(hc, "http://"+addr, append(append(opts, p.clientOpts...), connect.WithGRPC())...)
		m[addr] = c
	}
	return c
}

func (p *Peers) kvClient(addr string) kvstorev1connect.KVServiceClient {
	return cachedClient(p, p.kv, addr, kvstorev1connect.NewKVServiceClient, connect.WithSendMaxBytes(8<<20), connect.WithReadMaxBytes(64<<20))
}

func (p *Peers) leaseClient(addr string) kvstorev1connect.LeaseServiceClient {
	return cachedClient(p, p.lease, addr, kvstorev1connect.NewLeaseServiceClient)
}

func (p *Peers) authClient(addr string) kvstorev1connect.AuthServiceClient {
	return cachedClient(p, p.auth, addr, kvstorev1connect.NewAuthServiceClient)
}

func (p *Peers) peerClient(addr string) peerv1connect.PeerServiceClient {
	return cachedClientOn(p, p.peerHC, p.peer, addr, peerv1connect.NewPeerServiceClient)
}

func (p *Peers) clusterClient(addr string) kvstorev1connect.ClusterServiceClient {
	return cachedClient(p, p.cluster, addr, kvstorev1connect.NewClusterServiceClient)
}

// Members asks the node at addr for the ids in its raft configuration.
func (p *Peers) Members(ctx context.Context, addr string) ([]string, error) {
	resp, err := p.clusterClient(addr).Members(ctx, connect.NewRequest(&kvstorev1.MembersRequest{}))
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(resp.Msg.GetMembers()))
	for _, m := range resp.Msg.GetMembers() {
		ids = append(ids, m.GetId())
	}
	return ids, nil
}

// RemoveMember asks the node at addr, the leader, to remove id.
func (p *Peers) RemoveMember(ctx context.Context, addr, id string) error {
	_, err := p.clusterClient(addr).RemoveMember(ctx, connect.NewRequest(&kvstorev1.RemoveMemberRequest{Id: id}))
	return err
}

// CreateGroup asks the node at addr, the meta leader, to create a group.
func (p *Peers) CreateGroup(ctx context.Context, addr string, req *kvstorev1.CreateGroupRequest) (*kvstorev1.CreateGroupResponse, error) {
	resp, err := p.clusterClient(addr).CreateGroup(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, leaderCallErr(err)
	}
	return resp.Msg, nil
}

// LocalGroups asks the node at addr what it knows of the groups it hosts.
func (p *Peers) LocalGroups(ctx context.Context, addr string) (*kvstorev1.ListGroupsResponse, error) {
	resp, err := p.clusterClient(addr).ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{Local: true}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// MoveGroup asks the node at addr, the meta leader, to move a group or
// record a step of its move.
func (p *Peers) MoveGroup(ctx context.Context, addr string, req *kvstorev1.MoveGroupRequest) (*kvstorev1.MoveGroupResponse, error) {
	resp, err := p.clusterClient(addr).MoveGroup(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, leaderCallErr(err)
	}
	return resp.Msg, nil
}

// TransferLeadership asks the node at addr, the leader, to hand over.
func (p *Peers) TransferLeadership(ctx context.Context, addr, id string) (string, error) {
	resp, err := p.clusterClient(addr).TransferLeadership(ctx, connect.NewRequest(&kvstorev1.TransferLeadershipRequest{Id: id}))
	if err != nil {
		return "", err
	}
	return resp.Msg.GetLeaderId(), nil
}

// Applied asks the node at addr how far it has applied the raft log.
func (p *Peers) Applied(ctx context.Context, id, addr string) (uint64, error) {
	resp, err := p.clusterClient(addr).Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
	if err != nil {
		return 0, err
	}
	if err := answeredBy(id, addr, resp.Msg.GetNodeId()); err != nil {
		return 0, err
	}
	return resp.Msg.GetAppliedIndex(), nil
}

// Alarm sends an alarm change to the node at addr, the leader.
func (p *Peers) Alarm(ctx context.Context, addr string, req *kvstorev1.AlarmRequest) error {
	creq := connect.NewRequest(req)
	creq.Header().Set(forwardedHeader, p.self)
	_, err := p.clusterClient(addr).Alarm(ctx, creq)
	return err
}

// StateHash asks the node at addr for a hash of its state at rev, for the
// consistency check.
func (p *Peers) StateHash(ctx context.Context, id, addr string, rev uint64) (storage.StateHash, error) {
	resp, err := p.clusterClient(addr).AlarmHash(ctx, connect.NewRequest(&kvstorev1.AlarmHashRequest{Revision: int64(rev)}))
	if err != nil {
		return storage.StateHash{}, err
	}
	m := resp.Msg
	if err := answeredBy(id, addr, m.GetHeader().GetNodeId()); err != nil {
		return storage.StateHash{}, err
	}
	return storage.StateHash{Revision: uint64(m.GetRevision()), Compacted: uint64(m.GetCompactRevision()), Hash: m.GetHash(), Keys: m.GetKeys()}, nil
}

// answeredBy checks that node id answered a call to addr: an address can
// pass from one node to another (containers restarted together).
func answeredBy(id, addr, got string) error {
	if got != id {
		return fmt.Errorf("%s answers as node %q, not %s: the address passed to another node", addr, got, id)
	}
	return nil
}

// ReadIndex asks the node at addr, the leader, for a read index.
func (p *Peers) ReadIndex(ctx context.Context, addr string) (uint64, error) {
	return p.readIndex(ctx, addr, 0)
}

// GroupReadIndex is ReadIndex for data group id: a replica's
// consensus.Config.LeaderReadIndex.
func (p *Peers) GroupReadIndex(id uint64) func(ctx context.Context, addr string) (uint64, error) {
	return func(ctx context.Context, addr string) (uint64, error) { return p.readIndex(ctx, addr, id) }
}

func (p *Peers) readIndex(ctx context.Context, addr string, group uint64) (uint64, error) {
	resp, err := p.peerClient(addr).ReadIndex(ctx, connect.NewRequest(&peerv1.ReadIndexRequest{Group: group}))
	if err != nil {
		// One answer serves every read waiting for it (consensus'
		// readIndex).
		return 0, shared(err)
	}
	return resp.Msg.GetIndex(), nil
}

// forward sends a write that reached a follower on to the leader. It
// answers ok=false when the request cannot be forwarded: it was forwarded
// already, or no leader is known.
func forward[C, Req, Resp any](ctx context.Context, s *router, in *connect.Request[Req],
	client func(*Peers, string) C,
	call func(C, context.Context, *connect.Request[Req]) (*connect.Response[Resp], error),
) (resp *connect.Response[Resp], ok bool, err error) {
	if s.peers == nil || s.leader == nil || isForwarded(in.Header()) {
		return nil, false, nil
	}
	id, addr := s.leader()
	if addr == "" || id == s.peers.self {
		return nil, false, nil
	}
	user := forwardedUser(ctx)
	if w, ok := batchable(any(in.Msg)); ok {
		w.User = user
		d := s.peers.forwarder(addr).do(ctx, w)
		switch {
		case d.unsent:
			// The stream failed before this write went out: send it again,
			// to whichever node leads by then.
			ce := connect.NewError(connect.CodeUnavailable, fmt.Errorf("forward to the leader %s at %s: %w", id, addr, d.err))
			ce.Meta().Set(notLeaderMeta, "1")
			return nil, true, ce
		case d.err != nil:
			return nil, true, forwardErr(id, addr, d.err)
		case d.res.GetError() != nil:
			return nil, true, forwardErr(id, addr, resultErr(d.res.GetError()))
		default:
			msg, ok := any(d.res.GetPut()).(*Resp)
			if !ok || msg == nil {
				return nil, true, connect.NewError(connect.CodeInternal, fmt.Errorf("forward to the leader %s: answer of the wrong kind", id))
			}
			return connect.NewResponse(msg), true, nil
		}
	}
	out := connect.NewRequest(in.Msg)
	out.Header().Set(forwardedHeader, s.peers.self)
	if user != "" {
		out.Header().Set(forwardedUserHeader, user)
	}
	resp, err = call(client(s.peers, addr), ctx, out)
	if err != nil {
		return nil, true, forwardErr(id, addr, err)
	}
	return connect.NewResponse(resp.Msg), true, nil
}

func isForwarded(h http.Header) bool { return h.Get(forwardedHeader) != "" }

// ReadIndexer answers a follower's request for a read index.
type ReadIndexer interface {
	ReadIndex(ctx context.Context) (uint64, error)
}

type peerService struct {
	ri     ReadIndexer
	groups Groups // nil: only the meta group
	state  StateCopier
	admin  Admin // nil: no keyring changes
	logger *slog.Logger
}

// GossipKeys implements PeerService: the action on this node's keyring
// only.
func (p *peerService) GossipKeys(ctx context.Context, req *connect.Request[peerv1.GossipKeysRequest]) (*connect.Response[peerv1.GossipKeysResponse], error) {
	if err := checkGossipKeyRequest(req.Msg.GetAction(), req.Msg.GetKey()); err != nil {
		return nil, err
	}
	if p.admin == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("this node does not manage membership"))
	}
	rings, err := p.admin.GossipKeys(ctx, req.Msg.GetAction(), req.Msg.GetKey(), true)
	if err != nil {
		return nil, toConnect(p.logger, "gossip keys", err)
	}
	if len(rings) != 1 {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("a local keyring action answered for %d nodes", len(rings)))
	}
	return connect.NewResponse(&peerv1.GossipKeysResponse{Keyring: rings[0]}), nil
}

// GossipKeys asks the node at addr to carry out a keyring action on its own
// keyring.
func (p *Peers) GossipKeys(ctx context.Context, addr string, action kvstorev1.GossipKeyAction, key []byte) (*kvstorev1.GossipKeyring, error) {
	resp, err := p.peerClient(addr).GossipKeys(ctx, connect.NewRequest(&peerv1.GossipKeysRequest{Action: action, Key: key}))
	if err != nil {
		return nil, err
	}
	return resp.Msg.GetKeyring(), nil
}

func (p *peerService) ReadIndex(ctx context.Context, req *connect.Request[peerv1.ReadIndexRequest]) (*connect.Response[peerv1.ReadIndexResponse], error) {
	ri := p.ri
	if id := req.Msg.GetGroup(); id != 0 {
		var rep GroupReplica
		ok := false
		if p.groups != nil {
			rep, ok = p.groups.Replica(ranges.GroupID(id))
		}
		if !ok {
			return nil, toConnect(p.logger, "read index", fmt.Errorf("group %d: this node hosts no replica of it: %w", id, consensus.ErrNotLeader))
		}
		ri = rep
	}
	idx, err := ri.ReadIndex(ctx)
	if err != nil {
		return nil, toConnect(p.logger, "read index", err)
	}
	return connect.NewResponse(&peerv1.ReadIndexResponse{Index: idx}), nil
}

// StateCopier copies the node's key-value state for a member that rebuilds
// its own (consensus.Replica.CopyState).
type StateCopier interface {
	CopyState(ctx context.Context, minRev uint64, start func(rev uint64) (io.Writer, error)) error
}

// stateChunkBytes is the most bytes of a state copy one message carries.
const stateChunkBytes = 1 << 20

func (p *peerService) FetchState(ctx context.Context, req *connect.Request[peerv1.FetchStateRequest], stream *connect.ServerStream[peerv1.FetchStateResponse]) error {
	if err := p.fetchState(ctx, req.Msg, stream.Send); err != nil {
		return toConnect(p.logger, "fetch state", err)
	}
	return nil
}

// fetchState sends a copy of the state: a header, the copy in chunks, and
// a trailer with its SHA-256.
func (p *peerService) fetchState(ctx context.Context, req *peerv1.FetchStateRequest, send func(*peerv1.FetchStateResponse) error) error {
	if p.state == nil {
		return connect.NewError(connect.CodeUnimplemented, errors.New("this node does not copy its state"))
	}
	start := time.Now()
	sum := newChunkSum()
	var rev uint64
	err := streamCopy(ctx, func(b []byte) func() error {
		sum.add(b)
		return func() error {
			return send(&peerv1.FetchStateResponse{Part: &peerv1.FetchStateResponse_Chunk{Chunk: b}})
		}
	}, func(ctx context.Context, q *copyQueue) error {
		return p.state.CopyState(ctx, req.GetMinRevision(), func(r uint64) (io.Writer, error) {
			rev = r
			p.logger.Info("sending a copy of the key-value state", "to", req.GetNodeId(), "revision", r)
			hdr := &peerv1.FetchStateResponse{Part: &peerv1.FetchStateResponse_Header{Header: &peerv1.StateHeader{Revision: r}}}
			return q, q.push(func() error { return send(hdr) })
		})
	})
	if err != nil {
		return err
	}
	if err := send(&peerv1.FetchStateResponse{Part: &peerv1.FetchStateResponse_Trailer{Trailer: &peerv1.StateTrailer{
		Sha256: sum.hash.Sum(nil), Size: sum.size,
	}}}); err != nil {
		return err
	}
	p.logger.Info("sent a copy of the key-value state", "to", req.GetNodeId(), "revision", rev, "bytes", sum.size,
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}

// chunkSum is the SHA-256 and size of the chunks of a copy, in order.
type chunkSum struct {
	hash hash.Hash
	size uint64
}

func newChunkSum() *chunkSum { return &chunkSum{hash: sha256.New()} }

func (c *chunkSum) add(b []byte) {
	c.hash.Write(b)
	c.size += uint64(len(b))
}

// FetchState asks the node at addr for a copy of its key-value state at a
// revision of at least minRev (PeerService.FetchState) and returns it with
// its revision. The reader checks the copy against the SHA-256 its
// trailer carries: it fails at the end, rather than return io.EOF, if the
// copy did not arrive whole.
func (p *Peers) FetchState(ctx context.Context, addr string, minRev uint64) (io.ReadCloser, uint64, error) {
	stream, err := p.peerClient(addr).FetchState(ctx, connect.NewRequest(&peerv1.FetchStateRequest{MinRevision: minRev, NodeId: p.self}))
	if err != nil {
		return nil, 0, err
	}
	if !stream.Receive() {
		err := stream.Err()
		stream.Close()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, 0, err
	}
	hdr := stream.Msg().GetHeader()
	if hdr == nil {
		stream.Close()
		return nil, 0, fmt.Errorf("fetch state from %s: the stream does not start with a header", addr)
	}
	return &stateReader{stream: stream, hash: sha256.New(), addr: addr}, hdr.GetRevision(), nil
}

// stateReader reads the chunks of a FetchState stream.
type stateReader struct {
	stream *connect.ServerStreamForClient[peerv1.FetchStateResponse]
	hash   hash.Hash
	size   uint64
	addr   string
	chunk  []byte
	err    error
}

func (r *stateReader) Read(b []byte) (int, error) {
	for len(r.chunk) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		r.next()
	}
	n := copy(b, r.chunk)
	r.chunk = r.chunk[n:]
	return n, nil
}

// next takes the next message: a chunk, or the trailer, which ends the
// copy with io.EOF when it matches what came.
func (r *stateReader) next() {
	if !r.stream.Receive() {
		r.err = fmt.Errorf("fetch state from %s: the stream ended before its trailer: %w", r.addr, cmp.Or(r.stream.Err(), io.ErrUnexpectedEOF))
		return
	}
	switch part := r.stream.Msg().GetPart().(type) {
	case *peerv1.FetchStateResponse_Chunk:
		r.chunk = part.Chunk
		r.hash.Write(part.Chunk)
		r.size += uint64(len(part.Chunk))
	case *peerv1.FetchStateResponse_Trailer:
		if sum := r.hash.Sum(nil); part.Trailer.GetSize() != r.size || !bytes.Equal(sum, part.Trailer.GetSha256()) {
			r.err = fmt.Errorf("fetch state from %s: the copy does not match its trailer (%d bytes, SHA-256 %x; the trailer says %d bytes, %x)",
				r.addr, r.size, sum, part.Trailer.GetSize(), part.Trailer.GetSha256())
			return
		}
		r.err = io.EOF
	default:
		r.err = fmt.Errorf("fetch state from %s: unexpected message %T", r.addr, part)
	}
}

func (r *stateReader) Close() error { return r.stream.Close() }
