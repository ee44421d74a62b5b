package api

import (
	"context"
	"errors"
	"strings"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/gzip" // clients may send gzip requests
	grpcproto "google.golang.org/grpc/encoding/proto"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"

	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// GRPCMaxStreams bounds the requests in flight on one gRPC connection;
// clients open more connections past it.
const GRPCMaxStreams = 1000

// NewGRPCServer returns a gRPC server for the services NewHandler serves,
// with reflection and health, running the same handlers. It is the fast
// path for gRPC clients: grpc-go's own HTTP/2 server spends far less CPU
// per call than net/http's, which still serves gRPC on connections that
// also carry Connect or HTTP/JSON. Serve it on connections whose requests
// are gRPC (the node's Mux picks them out).
func NewGRPCServer(store Store, opts Options) *grpc.Server {
	return newGRPCServer(store, opts, false)
}

// NewPeerGRPCServer serves the peer services (read index, state copies)
// alone, with the same rules. A node serves it only on connections from
// other nodes, past the handshake (their own first byte), never on the
// clients' port paths: a state copy is the whole database, past any
// permission.
func NewPeerGRPCServer(store Store, opts Options) *grpc.Server {
	return newGRPCServer(store, opts, true)
}

func newGRPCServer(store Store, opts Options, peer bool) *grpc.Server {
	opts = opts.withDefaults()
	sv := newServices(store, opts)
	// kinds is filled below, before the server serves, and only read
	// after.
	kinds := map[string]methodKind{}
	rules := newCallRules(opts)
	// The metrics interceptors go first, so they count refused calls too.
	unaryChain := []grpc.UnaryServerInterceptor{rules.grpcUnaryRules(), refuseMalformed}
	streamChain := []grpc.StreamServerInterceptor{rules.grpcStreamRules(), receiveRules(kinds, opts.BodyReadTimeout)}
	if opts.Metrics != nil {
		unaryChain = append([]grpc.UnaryServerInterceptor{opts.Metrics.grpcUnary()}, unaryChain...)
		streamChain = append([]grpc.StreamServerInterceptor{opts.Metrics.grpcStream()}, streamChain...)
	}
	s := grpc.NewServer(
		grpc.Creds(connTLSCreds{}),
		grpc.MaxRecvMsgSize(rules.readLimit()),
		grpc.MaxConcurrentStreams(GRPCMaxStreams),
		grpc.MaxHeaderListSize(64<<10),
		grpc.ConnectionTimeout(10*time.Second),
		// Clients ping idle connections (Go's HTTP/2 transport, grpc-go
		// keepalives); grpc-go's default policy would close them for it.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		// Find clients that vanished while holding watches, and close
		// connections left idle, as net/http does.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second, MaxConnectionIdle: opts.IdleTimeout}),
		grpc.ForceServerCodecV2(requestCodec{encoding.GetCodecV2(grpcproto.Name)}),
		grpc.InTapHandle(rules.requestTap(kinds)),
		grpc.ChainUnaryInterceptor(unaryChain...),
		grpc.ChainStreamInterceptor(streamChain...),
	)
	if peer {
		if sv.peer != nil {
			peerv1.RegisterPeerServiceServer(s, grpcPeer{s: sv.peer})
		}
	} else {
		kvstorev1.RegisterKVServiceServer(s, grpcKV{s: sv.kv})
		kvstorev1.RegisterLeaseServiceServer(s, grpcLease{s: sv.lease})
		kvstorev1.RegisterWatchServiceServer(s, grpcWatch{s: sv.watch})
		kvstorev1.RegisterClusterServiceServer(s, grpcCluster{s: sv.cluster})
		kvstorev1.RegisterMaintenanceServiceServer(s, grpcMaintenance{s: sv.maintenance})
		kvstorev1.RegisterAuthServiceServer(s, grpcAuth{s: sv.auth})
		healthpb.RegisterHealthServer(s, grpcHealth{h: sv.health})
		if opts.GRPCServices != nil {
			opts.GRPCServices(s, sv.exported(store, opts))
		}
	}
	for name, info := range s.GetServiceInfo() {
		for _, m := range info.Methods {
			k := unaryMethod
			switch {
			case m.IsClientStream:
				k = bidiStream
			case m.IsServerStream:
				k = serverStream
			}
			kinds["/"+name+"/"+m.Name] = k
		}
	}
	if !peer {
		refl := reflection.ServerOptions{Services: publicOnly{s}}
		reflectionv1.RegisterServerReflectionServer(s, reflection.NewServerV1(refl))
		reflectionv1alpha.RegisterServerReflectionServer(s, reflection.NewServer(refl))
	}
	return s
}

// forwardedMDKey is forwardedHeader as gRPC metadata spells it.
var forwardedMDKey = strings.ToLower(forwardedHeader)

// unary runs a Connect handler for a gRPC call: the request keeps the
// headers the handlers read, and the answer's error becomes a gRPC status
// with its metadata as trailers, as Connect's gRPC protocol sends it.
func unary[Req, Resp any](ctx context.Context, req *Req, h func(context.Context, *connect.Request[Req]) (*connect.Response[Resp], error)) (*Resp, error) {
	creq := connect.NewRequest(req)
	// ValueFromIncomingContext reads one key without copying the metadata,
	// as FromIncomingContext would on every call.
	if v := metadata.ValueFromIncomingContext(ctx, forwardedMDKey); len(v) > 0 {
		creq.Header().Set(forwardedHeader, v[0])
	}
	resp, err := h(ctx, creq)
	if err != nil {
		return nil, grpcError(err, func(md metadata.MD) { _ = grpc.SetTrailer(ctx, md) })
	}
	return resp.Msg, nil
}

// grpcError turns a handler's error into a gRPC status; setTrailer takes
// the error's metadata.
func grpcError(err error, setTrailer func(metadata.MD)) error {
	if _, ok := status.FromError(err); ok {
		return err // grpc-go's own, from a stream's Send or Recv
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return status.Error(codes.Unknown, err.Error())
	}
	if meta := ce.Meta(); len(meta) > 0 {
		md := make(metadata.MD, len(meta))
		for k, vs := range meta {
			md[strings.ToLower(k)] = vs
		}
		setTrailer(md)
	}
	return status.Error(codes.Code(ce.Code()), ce.Message())
}

type grpcKV struct {
	kvstorev1.UnimplementedKVServiceServer
	s *kvService
}

func (g grpcKV) Put(ctx context.Context, r *kvstorev1.PutRequest) (*kvstorev1.PutResponse, error) {
	return unary(ctx, r, g.s.Put)
}

func (g grpcKV) Get(ctx context.Context, r *kvstorev1.GetRequest) (*kvstorev1.GetResponse, error) {
	return unary(ctx, r, g.s.Get)
}

func (g grpcKV) Range(ctx context.Context, r *kvstorev1.RangeRequest) (*kvstorev1.RangeResponse, error) {
	return unary(ctx, r, g.s.Range)
}

func (g grpcKV) Delete(ctx context.Context, r *kvstorev1.DeleteRequest) (*kvstorev1.DeleteResponse, error) {
	return unary(ctx, r, g.s.Delete)
}

func (g grpcKV) Txn(ctx context.Context, r *kvstorev1.TxnRequest) (*kvstorev1.TxnResponse, error) {
	return unary(ctx, r, g.s.Txn)
}

func (g grpcKV) Compact(ctx context.Context, r *kvstorev1.CompactRequest) (*kvstorev1.CompactResponse, error) {
	return unary(ctx, r, g.s.Compact)
}

type grpcLease struct {
	kvstorev1.UnimplementedLeaseServiceServer
	s *leaseService
}

func (g grpcLease) Grant(ctx context.Context, r *kvstorev1.GrantRequest) (*kvstorev1.GrantResponse, error) {
	return unary(ctx, r, g.s.Grant)
}

func (g grpcLease) Revoke(ctx context.Context, r *kvstorev1.RevokeRequest) (*kvstorev1.RevokeResponse, error) {
	return unary(ctx, r, g.s.Revoke)
}

func (g grpcLease) KeepAliveOnce(ctx context.Context, r *kvstorev1.KeepAliveOnceRequest) (*kvstorev1.KeepAliveOnceResponse, error) {
	return unary(ctx, r, g.s.KeepAliveOnce)
}

func (g grpcLease) TimeToLive(ctx context.Context, r *kvstorev1.TimeToLiveRequest) (*kvstorev1.TimeToLiveResponse, error) {
	return unary(ctx, r, g.s.TimeToLive)
}

func (g grpcLease) Leases(ctx context.Context, r *kvstorev1.LeasesRequest) (*kvstorev1.LeasesResponse, error) {
	return unary(ctx, r, g.s.Leases)
}

func (g grpcLease) KeepAlive(stream grpc.BidiStreamingServer[kvstorev1.KeepAliveRequest, kvstorev1.KeepAliveResponse]) error {
	err := g.s.keepAlive(stream.Context(), stream.Recv, stream.Send)
	if err != nil {
		return grpcError(err, stream.SetTrailer)
	}
	return nil
}

type grpcWatch struct {
	kvstorev1.UnimplementedWatchServiceServer
	s *watchService
}

func (g grpcWatch) Watch(r *kvstorev1.WatchRequest, stream grpc.ServerStreamingServer[kvstorev1.WatchResponse]) error {
	err := g.s.watch(stream.Context(), r, stream.Send)
	if err != nil {
		return grpcError(err, stream.SetTrailer)
	}
	return nil
}

type grpcAuth struct {
	kvstorev1.UnimplementedAuthServiceServer
	s *authService
}

func (g grpcAuth) Authenticate(ctx context.Context, r *kvstorev1.AuthenticateRequest) (*kvstorev1.AuthenticateResponse, error) {
	return unary(ctx, r, g.s.Authenticate)
}

func (g grpcAuth) AuthStatus(ctx context.Context, r *kvstorev1.AuthStatusRequest) (*kvstorev1.AuthStatusResponse, error) {
	return unary(ctx, r, g.s.AuthStatus)
}

func (g grpcAuth) AuthChange(ctx context.Context, r *kvstorev1.AuthChangeRequest) (*kvstorev1.AuthChangeResponse, error) {
	return unary(ctx, r, g.s.AuthChange)
}

func (g grpcAuth) AuthList(ctx context.Context, r *kvstorev1.AuthListRequest) (*kvstorev1.AuthListResponse, error) {
	return unary(ctx, r, g.s.AuthList)
}

type grpcCluster struct {
	kvstorev1.UnimplementedClusterServiceServer
	s *clusterService
}

func (g grpcCluster) Status(ctx context.Context, r *kvstorev1.StatusRequest) (*kvstorev1.StatusResponse, error) {
	return unary(ctx, r, g.s.Status)
}

func (g grpcCluster) Members(ctx context.Context, r *kvstorev1.MembersRequest) (*kvstorev1.MembersResponse, error) {
	return unary(ctx, r, g.s.Members)
}

func (g grpcCluster) RemoveMember(ctx context.Context, r *kvstorev1.RemoveMemberRequest) (*kvstorev1.RemoveMemberResponse, error) {
	return unary(ctx, r, g.s.RemoveMember)
}

func (g grpcCluster) GossipKeys(ctx context.Context, r *kvstorev1.GossipKeysRequest) (*kvstorev1.GossipKeysResponse, error) {
	return unary(ctx, r, g.s.GossipKeys)
}

func (g grpcCluster) CreateGroup(ctx context.Context, r *kvstorev1.CreateGroupRequest) (*kvstorev1.CreateGroupResponse, error) {
	return unary(ctx, r, g.s.CreateGroup)
}

func (g grpcCluster) MoveGroup(ctx context.Context, r *kvstorev1.MoveGroupRequest) (*kvstorev1.MoveGroupResponse, error) {
	return unary(ctx, r, g.s.MoveGroup)
}

func (g grpcCluster) ListGroups(ctx context.Context, r *kvstorev1.ListGroupsRequest) (*kvstorev1.ListGroupsResponse, error) {
	return unary(ctx, r, g.s.ListGroups)
}

func (g grpcCluster) TransferLeadership(ctx context.Context, r *kvstorev1.TransferLeadershipRequest) (*kvstorev1.TransferLeadershipResponse, error) {
	return unary(ctx, r, g.s.TransferLeadership)
}

func (g grpcCluster) Alarm(ctx context.Context, r *kvstorev1.AlarmRequest) (*kvstorev1.AlarmResponse, error) {
	return unary(ctx, r, g.s.Alarm)
}

func (g grpcCluster) AlarmHash(ctx context.Context, r *kvstorev1.AlarmHashRequest) (*kvstorev1.AlarmHashResponse, error) {
	return unary(ctx, r, g.s.AlarmHash)
}

type grpcPeer struct {
	peerv1.UnimplementedPeerServiceServer
	s *peerService
}

func (g grpcPeer) ReadIndex(ctx context.Context, r *peerv1.ReadIndexRequest) (*peerv1.ReadIndexResponse, error) {
	return unary(ctx, r, g.s.ReadIndex)
}

func (g grpcPeer) GossipKeys(ctx context.Context, r *peerv1.GossipKeysRequest) (*peerv1.GossipKeysResponse, error) {
	return unary(ctx, r, g.s.GossipKeys)
}

func (g grpcPeer) FetchState(r *peerv1.FetchStateRequest, stream grpc.ServerStreamingServer[peerv1.FetchStateResponse]) error {
	if err := g.s.fetchState(stream.Context(), r, stream.Send); err != nil {
		return grpcError(toConnect(g.s.logger, "fetch state", err), stream.SetTrailer)
	}
	return nil
}

type grpcMaintenance struct {
	kvstorev1.UnimplementedMaintenanceServiceServer
	s *maintenanceService
}

func (g grpcMaintenance) Snapshot(r *kvstorev1.SnapshotRequest, stream grpc.ServerStreamingServer[kvstorev1.SnapshotResponse]) error {
	if err := g.s.snapshot(stream.Context(), stream.Send); err != nil {
		return grpcError(toConnect(g.s.logger, "snapshot", err), stream.SetTrailer)
	}
	return nil
}

type grpcHealth struct {
	healthpb.UnimplementedHealthServer
	h *healthChecker
}

func (g grpcHealth) Check(ctx context.Context, r *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	resp, err := g.h.Check(ctx, &grpchealth.CheckRequest{Service: r.GetService()})
	if err != nil {
		return nil, grpcError(err, func(metadata.MD) {})
	}
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if resp.Status == grpchealth.StatusServing {
		st = healthpb.HealthCheckResponse_SERVING
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

// publicOnly hides the peer services from reflection, as NewHandler's
// reflector does.
type publicOnly struct{ s *grpc.Server }

func (p publicOnly) GetServiceInfo() map[string]grpc.ServiceInfo {
	all := p.s.GetServiceInfo()
	out := make(map[string]grpc.ServiceInfo, len(publicServices))
	for _, name := range publicServices {
		if info, ok := all[name]; ok {
			out[name] = info
		}
	}
	return out
}
