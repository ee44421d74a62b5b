package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"google.golang.org/grpc/metadata"
	"net/url"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// GRPCKVStore is the Target of one kvstore endpoint through grpc-go, the
// client most gRPC users run (and etcd's client is built on). Like KVStore
// it sends to that endpoint only.
type GRPCKVStore struct {
	kv kvstorev1.KVServiceClient
}

// NewGRPCKVStore returns the Target of the kvstore node cc is connected to.
func NewGRPCKVStore(cc grpc.ClientConnInterface) *GRPCKVStore {
	return &GRPCKVStore{kv: kvstorev1.NewKVServiceClient(cc)}
}

// Put implements Target.
func (s *GRPCKVStore) Put(ctx context.Context, key, value []byte) error {
	_, err := s.kv.Put(ctx, &kvstorev1.PutRequest{Key: key, Value: value})
	return err
}

// Get implements Target.
func (s *GRPCKVStore) Get(ctx context.Context, key []byte, serializable bool) ([]byte, error) {
	resp, err := s.kv.Get(ctx, &kvstorev1.GetRequest{Key: key, Consistency: consistency(serializable)})
	if status.Code(err) == codes.NotFound {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	v := resp.GetKv().GetValue()
	if v == nil {
		v = []byte{} // found, empty: not the nil of a missing key for CAS
	}
	return v, nil
}

// CAS implements Target as KVStore.CAS does.
func (s *GRPCKVStore) CAS(ctx context.Context, key, old, new []byte) (bool, error) {
	resp, err := s.kv.Txn(ctx, casTxn(key, old, new))
	if err != nil {
		return false, err
	}
	return resp.GetSucceeded(), nil
}

// Range implements Target, with linearizable reads.
func (s *GRPCKVStore) Range(ctx context.Context, start, end []byte, limit int64) error {
	_, err := s.kv.Range(ctx, &kvstorev1.RangeRequest{Key: start, RangeEnd: end, Limit: limit})
	return err
}

// dialGRPC opens one grpc-go connection to each endpoint URL, Conns times.
func dialGRPC(urls []string, o DialOptions) ([]Target, func(), error) {
	var ccs []*grpc.ClientConn
	closeAll := func() {
		for _, cc := range ccs {
			cc.Close()
		}
	}
	var targets []Target
	for range max(o.Conns, 1) {
		for _, raw := range urls {
			u, err := url.Parse(raw)
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("bench: endpoint %q: %w", raw, err)
			}
			creds := insecure.NewCredentials()
			if u.Scheme == "https" {
				cfg := &tls.Config{MinVersion: tls.VersionTLS12}
				if o.TLS != nil {
					cfg = o.TLS.Clone()
				}
				creds = credentials.NewTLS(cfg)
			}
			// passthrough: the address as given, no resolver in between.
			dialOpts := []grpc.DialOption{
				grpc.WithTransportCredentials(creds),
				grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 << 20)),
			}
			if o.Token != "" {
				dialOpts = append(dialOpts, grpc.WithUnaryInterceptor(tokenSender(o.Token)))
			}
			cc, err := grpc.NewClient("passthrough:///"+u.Host, dialOpts...)
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("bench: endpoint %q: %w", raw, err)
			}
			ccs = append(ccs, cc)
			targets = append(targets, NewGRPCKVStore(cc))
		}
	}
	return targets, closeAll, nil
}

// tokenSender sends an authentication token with every gRPC call, as the
// `token` metadata etcd's clients use.
func tokenSender(token string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(metadata.AppendToOutgoingContext(ctx, "token", token), method, req, reply, cc, opts...)
	}
}
