package api

import (
	"context"
	"log/slog"

	"google.golang.org/grpc"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// Services are the kvstore.v1 handlers, handed to another face of the same
// store (the etcd v3 API in api/etcd) so that both run one validation, one
// forwarding to the leader and one error mapping: a request is translated,
// never served by a second copy of that logic.
type Services struct {
	KV      kvstorev1connect.KVServiceHandler
	Lease   kvstorev1connect.LeaseServiceHandler
	Cluster kvstorev1connect.ClusterServiceHandler
	Auth    kvstorev1connect.AuthServiceHandler
	// Store is for what has no kvstore.v1 handler: watchers (a watch
	// stream's handler is the stream itself) and headers.
	Store Store
	// Snapshot streams a backup of the state as MaintenanceService does:
	// a header, the copy in chunks, a trailer.
	Snapshot func(ctx context.Context, send func(*kvstorev1.SnapshotResponse) error) error
	// WatchStore is the store whose watchers serve a watch of these keys:
	// Store, or this node's replica of the data group owning them.
	WatchStore func(*kvstorev1.WatchRequest) (Store, error)
	// OnMove calls moved once a watch's keys move to another group; stop
	// ends the wait.
	OnMove func(req *kvstorev1.WatchRequest, moved func()) (stop func())
	// CheckWatch validates a watch, and checks that its caller may read
	// its range, as the WatchService does.
	CheckWatch func(context.Context, *kvstorev1.WatchRequest) error
	// Limits are the node's request limits, with defaults filled in.
	Limits  Limits
	Version string
	Logger  *slog.Logger
	// Closing is Options.Closing (may be nil).
	Closing context.Context
}

func (sv *services) exported(store Store, opts Options) *Services {
	return &Services{
		KV:         sv.kv,
		Lease:      sv.lease,
		Cluster:    sv.cluster,
		Auth:       sv.auth,
		Store:      store,
		Snapshot:   sv.maintenance.snapshot,
		CheckWatch: sv.watch.check,
		WatchStore: func(req *kvstorev1.WatchRequest) (Store, error) { return sv.kv.groups.watchStore(req, store) },
		OnMove:     sv.kv.groups.onMove,
		Limits:     opts.Limits,
		Version:    opts.Version,
		Logger:     opts.Logger,
		Closing:    opts.Closing,
	}
}

// GRPCRegistrar registers more services on the gRPC server NewGRPCServer
// builds, before it serves; they share its interceptors and limits.
type GRPCRegistrar func(*grpc.Server, *Services)
