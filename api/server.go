// Package api serves kvstore's KVService and ClusterService over Connect,
// gRPC and gRPC-Web, with gRPC reflection, gRPC health and plain HTTP
// health endpoints, as one http.Handler.
package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"

	"github.com/kvstore/kvstore/consensus"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
	"github.com/kvstore/kvstore/storage"
)

// Store is the replicated store the handlers serve. Requests reach it
// already validated.
type Store interface {
	Put(context.Context, *kvstorev1.PutRequest) (*kvstorev1.PutResponse, error)
	Get(context.Context, *kvstorev1.GetRequest) (*kvstorev1.GetResponse, error)
	Range(context.Context, *kvstorev1.RangeRequest) (*kvstorev1.RangeResponse, error)
	Delete(context.Context, *kvstorev1.DeleteRequest) (*kvstorev1.DeleteResponse, error)
	Txn(context.Context, *kvstorev1.TxnRequest) (*kvstorev1.TxnResponse, error)
	Status(context.Context) (*kvstorev1.StatusResponse, error)
	Members(context.Context) (*kvstorev1.MembersResponse, error)
	Compact(context.Context, *kvstorev1.CompactRequest) (*kvstorev1.CompactResponse, error)
	// Watch starts a watcher on the node's applied state.
	Watch(storage.WatchSpec) (*storage.Watcher, error)
	// Header describes the node at a revision.
	Header(rev uint64) *kvstorev1.ResponseHeader
	LeaseStore
	// Alarm lists, raises or clears alarms; changes need the leader.
	Alarm(context.Context, *kvstorev1.AlarmRequest) (*kvstorev1.AlarmResponse, error)
	// StateHash hashes the state at a revision once applied (0: the
	// applied revision).
	StateHash(ctx context.Context, rev uint64) (storage.StateHash, error)
	// Ready returns why the node cannot serve requests now, or nil.
	Ready() error
	// Notices says, one line each, what a node that serves does not do
	// (alarms raised, writes refused); /readyz shows them.
	Notices() []string
}

// Options configure the handler.
type Options struct {
	// Limits bound requests; zero fields take DefaultLimits.
	Limits Limits
	// DefaultTimeout bounds a request that came without a deadline.
	DefaultTimeout time.Duration
	// LeaderWait bounds how long a request waits out an election before
	// it answers Unavailable; 0 takes DefaultLeaderWait. Set it from raft's
	// timing: an election takes one to two election timeouts, more when
	// the vote splits.
	LeaderWait time.Duration
	// BodyReadTimeout bounds how long one request message may take to
	// arrive once it started (a unary request's whole body); waiting for
	// the next message of a stream is not bounded. 0 takes
	// DefaultBodyReadTimeout.
	BodyReadTimeout time.Duration
	// IdleTimeout closes a gRPC connection (grpc-go's, NewGRPCServer)
	// with no call in flight for this long, as http.Server.IdleTimeout
	// does the others; 0 never does.
	IdleTimeout time.Duration
	// Version is reported by Status.
	Version string
	Logger  *slog.Logger

	// Peers, Leader and ReadIndexer make a cluster node: writes that reach
	// a follower go on to the leader (Leader tells who leads), and followers
	// ask the leader's ReadIndexer. All nil for a lone node.
	Peers       *Peers
	Leader      func() (id, addr string)
	ReadIndexer ReadIndexer
	// StateCopier serves copies of the node's state to members that
	// rebuild theirs; nil refuses them.
	StateCopier StateCopier
	// Snapshotter serves backups (MaintenanceService.Snapshot); nil
	// refuses them.
	Snapshotter Snapshotter
	// Admin changes the membership; nil refuses those calls.
	Admin Admin
	// ClusterID is this node's cluster id ("" while it has none): calls
	// that carry another (ClusterIDHeader: a node of another cluster) are
	// refused. Nil: none checked.
	ClusterID func() string
	// Metrics records every call the node serves, by either stack; nil
	// records none.
	Metrics *RequestMetrics
	// Closing, once closed, ends the watch streams with Unavailable so the
	// node can shut down (http.Server.Shutdown waits for every request,
	// and a watch never ends by itself); their clients resume elsewhere.
	// It ends followers' forward streams too, once their writes are
	// answered.
	Closing context.Context
	// Auth is the replicated users, roles and switch; nil: this node
	// keeps none (AuthService answers Unimplemented and every call is
	// let through).
	Auth AuthStore
	// AuthTokenTTL is how long a token works; 0 takes
	// DefaultAuthTokenTTL.
	AuthTokenTTL time.Duration
	// IsPeer, when set, says whether a call came over a connection that
	// proved to be another node's (with TLS on: a verified peer
	// certificate). A call that claims to be a node's (peerHeader,
	// ClusterIDHeader, forwardedHeader) counts as one only if it did; nil
	// (TLS off: nothing can tell) takes the claim.
	IsPeer func(context.Context) bool
	// Groups, if set, are the node's data groups: key requests are routed
	// to the group owning their keys. Nil: every key is the meta group's.
	Groups Groups
	// GRPCServices, if set, registers more services (the etcd v3 face) on
	// the gRPC server, over the same handlers.
	GRPCServices GRPCRegistrar
}

// Admin is what ClusterService needs from the node beyond the store.
type Admin interface {
	// RemoveMember removes a node from raft; it refuses a voter whose
	// removal would leave the live voters without a quorum.
	RemoveMember(ctx context.Context, id string) error
	// TransferLeadership hands leadership to id (empty: any voter) and
	// returns the new leader.
	TransferLeadership(ctx context.Context, id string) (string, error)
	// GossipKeys carries out a gossip keyring action on every live member
	// (with local, on this node only) and returns each member's keyring,
	// or why it could not act. Its error is only for the call as a whole.
	GossipKeys(ctx context.Context, action kvstorev1.GossipKeyAction, key []byte, local bool) ([]*kvstorev1.GossipKeyring, error)
	// GossipStates maps node ids to their gossip state.
	GossipStates() map[string]string
	// CreateGroup creates a data group (the meta leader places its
	// replicas when the request names none) and returns once it has a
	// leader.
	CreateGroup(ctx context.Context, req *kvstorev1.CreateGroupRequest) (*kvstorev1.CreateGroupResponse, error)
	// MoveGroup moves a group's replicas (or records a step of a move,
	// req.Step) and returns once the group's voters are the nodes named.
	MoveGroup(ctx context.Context, req *kvstorev1.MoveGroupRequest) (*kvstorev1.MoveGroupResponse, error)
	// ListGroups lists the range table, with each group's leader,
	// revision and keys where a replica answers; unless local, the table
	// is read linearizably.
	ListGroups(ctx context.Context, local bool) (*kvstorev1.ListGroupsResponse, error)
}

// compressMinBytes is the smallest response that is compressed when the
// client accepts it.
const compressMinBytes = 8 << 10

// NewHandler returns the node's HTTP handler: both services, reflection,
// health, /healthz and /readyz.
func NewHandler(store Store, opts Options) http.Handler {
	opts = opts.withDefaults()
	sv := newServices(store, opts)
	rules := newCallRules(opts)
	// One chain for every service, as NewGRPCServer's: the metrics
	// interceptor goes first, so it counts refused calls too.
	var chain []connect.Interceptor
	if opts.Metrics != nil {
		chain = append(chain, opts.Metrics.connectInterceptor())
	}
	chain = append(chain, connectRules{rules})
	base := []connect.HandlerOption{connect.WithReadMaxBytes(rules.readLimit()), connect.WithInterceptors(chain...)}
	handlerOpts := append(append(strictJSONCodecs(), base...),
		// Clients (Connect and gRPC alike) offer gzip by default; gzipping
		// every small response cost the leader about a tenth of its CPU
		// per put. Compress only responses big enough to gain from it.
		connect.WithCompressMinBytes(compressMinBytes),
	)
	mux := http.NewServeMux()
	mux.Handle(kvstorev1connect.NewKVServiceHandler(sv.kv, handlerOpts...))
	mux.Handle(kvstorev1connect.NewLeaseServiceHandler(sv.lease, handlerOpts...))
	// Watches are long-lived streams: no default deadline, and a write
	// that blocks on a reader that stopped reading can be cut off.
	watchPath, watchHandler := kvstorev1connect.NewWatchServiceHandler(sv.watch, append(strictJSONCodecs(), base...)...)
	mux.Handle(watchPath, withResponseController(watchHandler))
	// No peer services here: they are served to other nodes alone
	// (NewPeerGRPCServer).
	mux.Handle(kvstorev1connect.NewClusterServiceHandler(sv.cluster, handlerOpts...))
	mux.Handle(kvstorev1connect.NewAuthServiceHandler(sv.auth, handlerOpts...))
	// A snapshot is a long stream: no default deadline, and a write
	// blocked on a reader that stopped reading can be cut off. Not
	// gzipped: deflating a whole store costs more CPU than the copy.
	snapPath, snapHandler := kvstorev1connect.NewMaintenanceServiceHandler(sv.maintenance,
		append(append(strictJSONCodecs(), base...), connect.WithCompression("gzip", nil, nil))...)
	mux.Handle(snapPath, withResponseController(snapHandler))

	reflector := grpcreflect.NewStaticReflector(publicServices...)
	// Reflection and health take the same request limit as the services:
	// without it they read messages of any size.
	maxRequest := connect.WithHandlerOptions(base...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector, maxRequest))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector, maxRequest))
	mux.Handle(grpchealth.NewHandler(sv.health, maxRequest))

	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		// The first line is the verdict; the notices follow, one a line.
		text, code := "ok\n", http.StatusOK
		if err := store.Ready(); err != nil {
			text, code = "not ready: "+err.Error()+"\n", http.StatusServiceUnavailable
		}
		for _, n := range store.Notices() {
			text += n + "\n"
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(code)
		w.Write([]byte(text))
	})
	return withBodyRules(mux, opts.BodyReadTimeout)
}

// publicServices are the services reflection lists: the peer services
// are for nodes only.
var publicServices = []string{
	kvstorev1connect.KVServiceName,
	kvstorev1connect.ClusterServiceName,
	kvstorev1connect.WatchServiceName,
	kvstorev1connect.LeaseServiceName,
	kvstorev1connect.MaintenanceServiceName,
	kvstorev1connect.AuthServiceName,
	grpchealth.HealthV1ServiceName,
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Limits = o.Limits.withDefaults()
	if o.DefaultTimeout <= 0 {
		o.DefaultTimeout = 10 * time.Second
	}
	if o.LeaderWait <= 0 {
		o.LeaderWait = DefaultLeaderWait
	}
	if o.BodyReadTimeout <= 0 {
		o.BodyReadTimeout = DefaultBodyReadTimeout
	}
	if o.AuthTokenTTL <= 0 {
		o.AuthTokenTTL = DefaultAuthTokenTTL
	}
	return o
}

func (o Options) authorizer() authorizer {
	return authorizer{store: o.Auth, ttl: o.AuthTokenTTL, isPeer: o.IsPeer}
}

// services are the handlers both NewHandler and NewGRPCServer serve, so
// that Connect and gRPC clients reach the same code.
type services struct {
	kv          *kvService
	lease       *leaseService
	watch       *watchService
	cluster     *clusterService
	maintenance *maintenanceService
	health      *healthChecker
	auth        *authService
	peer        *peerService      // nil on a lone node
	peerWrite   *peerWriteService // nil on a lone node
}

func newServices(store Store, opts Options) *services {
	rt := router{logger: opts.Logger, peers: opts.Peers, leader: opts.Leader, leaderWait: opts.LeaderWait}
	az := opts.authorizer()
	sv := &services{
		kv:      &kvService{router: rt, store: store, limits: opts.Limits, authz: az, groups: newGroupRoutes(opts.Groups, rt)},
		lease:   &leaseService{router: rt, store: store, authz: az},
		watch:   &watchService{store: store, limits: opts.Limits, logger: opts.Logger, closing: opts.Closing, authz: az},
		cluster: &clusterService{router: rt, store: store, admin: opts.Admin, version: opts.Version, authz: az, closing: opts.Closing},
		health:  &healthChecker{store: store},
		auth:    &authService{router: rt, store: store, authz: az},

		maintenance: newMaintenanceService(store, opts.Snapshotter, opts.Logger, az),
	}
	sv.cluster.kv = sv.kv
	sv.watch.groups = sv.kv.groups
	sv.maintenance.groups = sv.kv.groups
	if opts.ReadIndexer != nil {
		sv.peer = &peerService{ri: opts.ReadIndexer, groups: opts.Groups, state: opts.StateCopier, admin: opts.Admin, logger: opts.Logger}
		sv.peerWrite = &peerWriteService{kv: sv.kv, timeout: opts.DefaultTimeout, closing: opts.Closing}
	}
	return sv
}

// healthChecker answers gRPC health: SERVING while the node can serve.
type healthChecker struct{ store Store }

func (h *healthChecker) Check(_ context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	switch req.Service {
	case "", kvstorev1connect.KVServiceName, kvstorev1connect.ClusterServiceName,
		kvstorev1connect.WatchServiceName, kvstorev1connect.LeaseServiceName, kvstorev1connect.MaintenanceServiceName,
		kvstorev1connect.AuthServiceName:
	default:
		return nil, connect.NewError(connect.CodeNotFound, errUnknownService(req.Service))
	}
	if h.store.Ready() != nil {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
}

type errUnknownService string

// The name is quoted cut short, as keys are: over gRPC the message is an
// HTTP/2 trailer, which must stay small.
func (e errUnknownService) Error() string { return "unknown service " + quote([]byte(e)) }

type kvService struct {
	router
	store  Store
	groups *groupRoutes // nil: only the meta group
	limits Limits
	authz  authorizer
}

// router sends a request that needs the leader on to it, when this node is
// not the leader.
type router struct {
	logger *slog.Logger
	peers  *Peers
	leader func() (id, addr string)
	// leaderWait is Options.LeaderWait.
	leaderWait time.Duration
}

func (s *kvService) Put(ctx context.Context, creq *connect.Request[kvstorev1.PutRequest]) (*connect.Response[kvstorev1.PutResponse], error) {
	if err := s.limits.put(creq.Msg); err != nil {
		return nil, err
	}
	if err := s.authz.authorize(ctx, creq.Header(), false, needsOf(creq.Msg)...); err != nil {
		return nil, err
	}
	return routed(ctx, s, creq.Msg, func(st Store, rt *router) (*connect.Response[kvstorev1.PutResponse], error) {
		return write(ctx, rt, creq, "put", st.Put, (*Peers).kvClient, kvstorev1connect.KVServiceClient.Put)
	})
}

func (s *kvService) Get(ctx context.Context, creq *connect.Request[kvstorev1.GetRequest]) (*connect.Response[kvstorev1.GetResponse], error) {
	req := creq.Msg
	if err := s.limits.get(req); err != nil {
		return nil, err
	}
	if err := s.authz.authorize(ctx, creq.Header(), false, needsOf(req)...); err != nil {
		return nil, err
	}
	resp, err := routed(ctx, s, req, func(st Store, rt *router) (*kvstorev1.GetResponse, error) {
		return read(ctx, rt, creq, "get", st.Get, kvstorev1connect.KVServiceClient.Get)
	})
	if err != nil {
		return nil, err
	}
	// Again, against the state as of the read (see authorize).
	if err := s.authz.authorize(ctx, creq.Header(), false, needsOf(req)...); err != nil {
		return nil, err
	}
	if resp.GetKv() == nil {
		return nil, connect.NewError(connect.CodeNotFound, errKeyNotFound(req.GetKey()))
	}
	return connect.NewResponse(resp), nil
}

// write applies a write here when this node leads, or forwards it to the
// leader, waiting out an election in between (see awaitLeader).
func write[C, Req, Resp any](ctx context.Context, s *router, creq *connect.Request[Req], op string,
	local func(context.Context, *Req) (*Resp, error),
	client func(*Peers, string) C,
	remote func(C, context.Context, *connect.Request[Req]) (*connect.Response[Resp], error),
) (*connect.Response[Resp], error) {
	out, err := awaitLeader(ctx, isForwarded(creq.Header()), s.leaderWait, func() (*connect.Response[Resp], error) {
		resp, err := local(ctx, creq.Msg)
		if errors.Is(err, consensus.ErrNotLeader) {
			if fwd, ok, ferr := forward(ctx, s, creq, client, remote); ok {
				return fwd, ferr
			}
		}
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(resp), nil
	})
	if err != nil {
		return nil, toConnect(s.logger, op, err)
	}
	return out, nil
}

// read serves a read here, waiting out an election; a node that cannot
// catch up with the leader (consensus.ErrCannotCatchUp) hands it to the
// leader.
func read[Req, Resp any](ctx context.Context, s *router, creq *connect.Request[Req], op string,
	local func(context.Context, *Req) (*Resp, error),
	remote func(kvstorev1connect.KVServiceClient, context.Context, *connect.Request[Req]) (*connect.Response[Resp], error),
) (*Resp, error) {
	resp, err := awaitLeader(ctx, isForwarded(creq.Header()), s.leaderWait, func() (*Resp, error) {
		resp, err := local(ctx, creq.Msg)
		if errors.Is(err, consensus.ErrCannotCatchUp) {
			if fwd, ok, ferr := forward(ctx, s, creq, (*Peers).kvClient, remote); ok {
				if ferr != nil {
					return nil, ferr
				}
				return fwd.Msg, nil
			}
		}
		return resp, err
	})
	if err != nil {
		return nil, toConnect(s.logger, op, err)
	}
	return resp, nil
}

type errKeyNotFound []byte

func (e errKeyNotFound) Error() string { return "key " + quote(e) + " not found" }

// quote shows a key in a message, cut short: keys may be 4 KiB of binary.
func quote(b []byte) string {
	const max = 64
	if len(b) > max {
		return strconv.Quote(string(b[:max])) + "..."
	}
	return strconv.Quote(string(b))
}

func (s *kvService) Range(ctx context.Context, creq *connect.Request[kvstorev1.RangeRequest]) (*connect.Response[kvstorev1.RangeResponse], error) {
	req := creq.Msg
	if err := s.limits.rangeReq(req); err != nil {
		return nil, err
	}
	if err := s.authz.authorize(ctx, creq.Header(), false, needsOf(req)...); err != nil {
		return nil, err
	}
	resp, err := routed(ctx, s, req, func(st Store, rt *router) (*kvstorev1.RangeResponse, error) {
		return read(ctx, rt, creq, "range", st.Range, kvstorev1connect.KVServiceClient.Range)
	})
	if err != nil {
		return nil, err
	}
	if err := s.authz.authorize(ctx, creq.Header(), false, needsOf(req)...); err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

func (s *kvService) Delete(ctx context.Context, creq *connect.Request[kvstorev1.DeleteRequest]) (*connect.Response[kvstorev1.DeleteResponse], error) {
	if err := s.limits.deleteReq(creq.Msg); err != nil {
		return nil, err
	}
	if err := s.authz.authorize(ctx, creq.Header(), false, needsOf(creq.Msg)...); err != nil {
		return nil, err
	}
	return routed(ctx, s, creq.Msg, func(st Store, rt *router) (*connect.Response[kvstorev1.DeleteResponse], error) {
		return write(ctx, rt, creq, "delete", st.Delete, (*Peers).kvClient, kvstorev1connect.KVServiceClient.Delete)
	})
}

func (s *kvService) Txn(ctx context.Context, creq *connect.Request[kvstorev1.TxnRequest]) (*connect.Response[kvstorev1.TxnResponse], error) {
	if err := s.limits.txn(creq.Msg); err != nil {
		return nil, err
	}
	if err := s.authz.authorize(ctx, creq.Header(), false, needsOf(creq.Msg)...); err != nil {
		return nil, err
	}
	return routed(ctx, s, creq.Msg, func(st Store, rt *router) (*connect.Response[kvstorev1.TxnResponse], error) {
		return write(ctx, rt, creq, "txn", st.Txn, (*Peers).kvClient, kvstorev1connect.KVServiceClient.Txn)
	})
}

type clusterService struct {
	router
	store   Store
	kv      *kvService // routes the reads that wait for a new group
	admin   Admin
	version string
	authz   authorizer
	// closing is Options.Closing (may be nil): it ends the calls that
	// wait for the cluster to make progress.
	closing context.Context
}

func (s *clusterService) Status(ctx context.Context, creq *connect.Request[kvstorev1.StatusRequest]) (*connect.Response[kvstorev1.StatusResponse], error) {
	if err := s.authz.authorize(ctx, creq.Header(), false); err != nil {
		return nil, err
	}
	resp, err := s.store.Status(ctx)
	if err != nil {
		return nil, toConnect(s.logger, "status", err)
	}
	resp.Version = s.version
	return connect.NewResponse(resp), nil
}

func (s *clusterService) Members(ctx context.Context, creq *connect.Request[kvstorev1.MembersRequest]) (*connect.Response[kvstorev1.MembersResponse], error) {
	if err := s.authz.authorize(ctx, creq.Header(), false); err != nil {
		return nil, err
	}
	resp, err := s.store.Members(ctx)
	if err != nil {
		return nil, toConnect(s.logger, "members", err)
	}
	if s.admin != nil {
		states := s.admin.GossipStates()
		for _, m := range resp.GetMembers() {
			m.GossipState = states[m.GetId()]
		}
	}
	return connect.NewResponse(resp), nil
}

// GossipKeys implements ClusterService.
func (s *clusterService) GossipKeys(ctx context.Context, creq *connect.Request[kvstorev1.GossipKeysRequest]) (*connect.Response[kvstorev1.GossipKeysResponse], error) {
	if err := checkGossipKeyRequest(creq.Msg.GetAction(), creq.Msg.GetKey()); err != nil {
		return nil, err
	}
	if s.admin == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("this node does not manage membership"))
	}
	members, err := s.admin.GossipKeys(ctx, creq.Msg.GetAction(), creq.Msg.GetKey(), false)
	if err != nil {
		return nil, toConnect(s.logger, "gossip keys", err)
	}
	st, err := s.store.Status(ctx)
	if err != nil {
		return nil, toConnect(s.logger, "gossip keys", err)
	}
	return connect.NewResponse(&kvstorev1.GossipKeysResponse{Header: st.GetHeader(), Members: members}), nil
}

// checkGossipKeyRequest checks a keyring action and its key.
func checkGossipKeyRequest(action kvstorev1.GossipKeyAction, key []byte) error {
	switch action {
	case kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_LIST:
		if len(key) > 0 {
			return invalid("list takes no key")
		}
		return nil
	case kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_INSTALL, kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_USE, kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_REMOVE:
		switch len(key) {
		case 16, 24, 32:
			return nil
		}
		return invalid("a gossip key is 16, 24 or 32 bytes, not %d", len(key))
	}
	return invalid("unknown gossip key action %v", action)
}

func (s *clusterService) RemoveMember(ctx context.Context, creq *connect.Request[kvstorev1.RemoveMemberRequest]) (*connect.Response[kvstorev1.RemoveMemberResponse], error) {
	if creq.Msg.GetId() == "" {
		return nil, invalid("id is empty")
	}
	if err := s.authz.authorize(ctx, creq.Header(), true); err != nil {
		return nil, err
	}
	if s.admin == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("this node does not manage membership"))
	}
	if err := s.admin.RemoveMember(ctx, creq.Msg.GetId()); err != nil {
		return nil, toConnect(s.logger, "remove member", err)
	}
	st, err := s.store.Status(ctx)
	if err != nil {
		return nil, toConnect(s.logger, "remove member", err)
	}
	return connect.NewResponse(&kvstorev1.RemoveMemberResponse{Header: st.GetHeader()}), nil
}

func (s *clusterService) TransferLeadership(ctx context.Context, creq *connect.Request[kvstorev1.TransferLeadershipRequest]) (*connect.Response[kvstorev1.TransferLeadershipResponse], error) {
	if err := s.authz.authorize(ctx, creq.Header(), true); err != nil {
		return nil, err
	}
	if s.admin == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("this node does not manage membership"))
	}
	leader, err := s.admin.TransferLeadership(ctx, creq.Msg.GetId())
	if err != nil {
		return nil, toConnect(s.logger, "transfer leadership", err)
	}
	st, err := s.store.Status(ctx)
	if err != nil {
		return nil, toConnect(s.logger, "transfer leadership", err)
	}
	return connect.NewResponse(&kvstorev1.TransferLeadershipResponse{Header: st.GetHeader(), LeaderId: leader}), nil
}

// Alarm lists the alarms this node has applied, or sends a change on to
// the leader.
func (s *clusterService) Alarm(ctx context.Context, creq *connect.Request[kvstorev1.AlarmRequest]) (*connect.Response[kvstorev1.AlarmResponse], error) {
	req := creq.Msg
	list := req.GetAction() == kvstorev1.AlarmAction_ALARM_ACTION_UNSPECIFIED || req.GetAction() == kvstorev1.AlarmAction_ALARM_ACTION_LIST
	if err := s.authz.authorize(ctx, creq.Header(), !list); err != nil {
		return nil, err
	}
	switch req.GetAction() {
	case kvstorev1.AlarmAction_ALARM_ACTION_UNSPECIFIED, kvstorev1.AlarmAction_ALARM_ACTION_LIST:
		resp, err := s.store.Alarm(ctx, req)
		if err != nil {
			return nil, toConnect(s.logger, "alarm", err)
		}
		return connect.NewResponse(resp), nil
	case kvstorev1.AlarmAction_ALARM_ACTION_ACTIVATE:
		if req.GetMemberId() == "" || req.GetAlarm() == kvstorev1.AlarmType_ALARM_TYPE_UNSPECIFIED {
			return nil, invalid("alarm: activating needs member_id and alarm")
		}
	case kvstorev1.AlarmAction_ALARM_ACTION_DEACTIVATE:
	default:
		return nil, invalid("alarm: unknown action %d", req.GetAction())
	}
	if _, ok := kvstorev1.AlarmType_name[int32(req.GetAlarm())]; !ok {
		return nil, invalid("alarm: unknown alarm type %d", req.GetAlarm())
	}
	return write(ctx, &s.router, creq, "alarm", s.store.Alarm, (*Peers).clusterClient, kvstorev1connect.ClusterServiceClient.Alarm)
}

// AlarmHash hashes this node's state at a revision, for the leader's
// consistency check.
func (s *clusterService) AlarmHash(ctx context.Context, creq *connect.Request[kvstorev1.AlarmHashRequest]) (*connect.Response[kvstorev1.AlarmHashResponse], error) {
	if creq.Msg.GetRevision() < 0 {
		return nil, invalid("revision %d is negative", creq.Msg.GetRevision())
	}
	if err := s.authz.authorize(ctx, creq.Header(), false); err != nil {
		return nil, err
	}
	h, err := s.store.StateHash(ctx, uint64(creq.Msg.GetRevision()))
	if err != nil {
		return nil, toConnect(s.logger, "alarm hash", err)
	}
	return connect.NewResponse(&kvstorev1.AlarmHashResponse{
		Header:          s.store.Header(h.Revision),
		Revision:        int64(h.Revision),
		CompactRevision: int64(h.Compacted),
		Hash:            h.Hash,
		Keys:            h.Keys,
	}), nil
}

func (s *kvService) Compact(ctx context.Context, creq *connect.Request[kvstorev1.CompactRequest]) (*connect.Response[kvstorev1.CompactResponse], error) {
	if err := compactReq(creq.Msg); err != nil {
		return nil, err
	}
	if err := s.authz.authorize(ctx, creq.Header(), true); err != nil {
		return nil, err
	}
	return write(ctx, &s.router, creq, "compact", s.store.Compact, (*Peers).kvClient, kvstorev1connect.KVServiceClient.Compact)
}
