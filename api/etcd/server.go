package etcd

import (
	"context"
	"errors"
	"github.com/kvstore/kvstore/auth"
	"hash/fnv"
	"strings"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/consensus"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// Register serves the etcd v3 services on s over sv: pass it as
// api.Options.GRPCServices.
func Register(s *grpc.Server, sv *api.Services) {
	Options{}.Register(s, sv)
}

// Options tune the etcd face; the zero value is etcd's defaults.
type Options struct {
	// ProgressNotifyInterval is how often a watch created with
	// progress_notify hears the revision it has reached while idle; 0 is
	// etcd's 10 minutes.
	ProgressNotifyInterval time.Duration
	// DBSize, if set, is the size of the node's state on disk, for
	// Maintenance.Status.
	DBSize func() int64
	// LeaderCheck is how often a watch stream opened with etcd's
	// require-leader metadata checks that this node knows a leader, and
	// ends with "etcdserver: no leader" when it does not (so that the
	// client moves to another member); 0 is 1 s, etcd's election timeout.
	LeaderCheck time.Duration
}

// Register serves the etcd v3 services on s over sv with these options.
func (o Options) Register(s *grpc.Server, sv *api.Services) {
	if o.ProgressNotifyInterval <= 0 {
		o.ProgressNotifyInterval = 10 * time.Minute
	}
	if o.LeaderCheck <= 0 {
		o.LeaderCheck = time.Second
	}
	f := &face{sv: sv, opts: o}
	pb.RegisterKVServer(s, kvServer{f})
	pb.RegisterWatchServer(s, watchServer{f})
	pb.RegisterLeaseServer(s, leaseServer{f})
	pb.RegisterClusterServer(s, clusterServer{f})
	pb.RegisterMaintenanceServer(s, maintenanceServer{f})
	pb.RegisterAuthServer(s, authServer{f: f})
}

// face holds what every etcd service needs.
type face struct {
	sv   *api.Services
	opts Options
}

// ID maps one of kvstore's string ids (a node or cluster id) to the 64-bit
// id etcd's API carries: the FNV-1a hash, 0 for none.
func ID(s string) uint64 {
	if s == "" {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(s))
	if v := h.Sum64(); v != 0 {
		return v
	}
	return 1
}

func header(h *kvstorev1.ResponseHeader) *pb.ResponseHeader {
	if h == nil {
		return &pb.ResponseHeader{}
	}
	return &pb.ResponseHeader{
		ClusterId: ID(h.GetClusterId()),
		MemberId:  ID(h.GetNodeId()),
		Revision:  h.GetRevision(),
		RaftTerm:  h.GetRaftTerm(),
	}
}

func (f *face) header(rev uint64) *pb.ResponseHeader { return header(f.sv.Store.Header(rev)) }

func toKV(kv *kvstorev1.KeyValue) *mvccpb.KeyValue {
	if kv == nil {
		return nil
	}
	return &mvccpb.KeyValue{
		Key:            kv.GetKey(),
		Value:          kv.GetValue(),
		CreateRevision: kv.GetCreateRevision(),
		ModRevision:    kv.GetModRevision(),
		Version:        kv.GetVersion(),
		Lease:          kv.GetLease(),
	}
}

func toKVs(kvs []*kvstorev1.KeyValue) []*mvccpb.KeyValue {
	if len(kvs) == 0 {
		return nil
	}
	out := make([]*mvccpb.KeyValue, len(kvs))
	for i, kv := range kvs {
		out[i] = toKV(kv)
	}
	return out
}

// etcdError answers an error of the kvstore.v1 handlers or the store as
// etcd would: its rpctypes status where etcd has one (clientv3 turns those
// messages back into its own errors), else the handler's code and message.
func etcdError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok && !isConnect(err) {
		return err
	}
	switch {
	case is(err, storage.ErrCompacted):
		return rpctypes.ErrGRPCCompacted
	case is(err, storage.ErrFutureRevision):
		return rpctypes.ErrGRPCFutureRev
	case is(err, consensus.ErrLeaseNotFound):
		return rpctypes.ErrGRPCLeaseNotFound
	case is(err, consensus.ErrLeaseExists):
		return rpctypes.ErrGRPCLeaseExist
	case is(err, consensus.ErrNoSpace):
		return rpctypes.ErrGRPCNoSpace
	case is(err, consensus.ErrCorrupt):
		return rpctypes.ErrGRPCCorrupt
	case connect.CodeOf(err) == connect.CodePermissionDenied, is(err, api.ErrUnknownCertUser):
		// etcd too refuses a client certificate naming no user as a
		// permission denied (its token would be no better).
		return rpctypes.ErrGRPCPermissionDenied
	case connect.CodeOf(err) == connect.CodeUnauthenticated:
		// clientv3 authenticates again on these two (its token expired,
		// or authentication was turned on since it connected).
		if is(err, api.ErrNoCredentials) {
			return rpctypes.ErrGRPCUserEmpty
		}
		return rpctypes.ErrGRPCInvalidAuthToken
	case is(err, auth.ErrExists) && strings.Contains(err.Error(), "user "):
		return rpctypes.ErrGRPCUserAlreadyExist
	case is(err, auth.ErrExists):
		return rpctypes.ErrGRPCRoleAlreadyExist
	case is(err, auth.ErrNotFound) && strings.Contains(err.Error(), "role "):
		return rpctypes.ErrGRPCRoleNotFound
	case is(err, auth.ErrNotFound) && strings.Contains(err.Error(), "user "):
		return rpctypes.ErrGRPCUserNotFound
	case errors.Is(err, api.ErrDuplicateKey):
		return rpctypes.ErrGRPCDuplicateKey
	case is(err, consensus.ErrTimeout):
		return rpctypes.ErrGRPCTimeout
	case is(err, consensus.ErrShutdown):
		return rpctypes.ErrGRPCStopped
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, context.Canceled.Error())
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		if ce.Code() == connect.CodeUnavailable && is(err, consensus.ErrNotLeader) {
			return rpctypes.ErrGRPCNoLeader
		}
		return status.Error(codes.Code(ce.Code()), ce.Message())
	}
	return status.Error(codes.Unknown, err.Error())
}

// is is errors.Is, or for an error that came back from the leader (its
// chain stayed there), whether the text it forwarded names target.
func is(err, target error) bool {
	if errors.Is(err, target) {
		return true
	}
	var ce *connect.Error
	return errors.As(err, &ce) && strings.Contains(ce.Message(), target.Error())
}

func isConnect(err error) bool {
	var ce *connect.Error
	return errors.As(err, &ce)
}

// unimplemented refuses what kvstore does not do, saying why.
func unimplemented(msg string) error {
	return status.Error(codes.Unimplemented, "kvstore: "+msg)
}
