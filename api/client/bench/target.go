package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvstore/kvstore/api/client"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// Target is the store under test. The workloads call only these methods, so
// the same generator can drive kvstore, etcd or a fake.
//
// A Target is used by one or more request loops at once and must be safe
// for concurrent use. The methods must not keep the slices they are given
// after returning: the loops reuse them.
type Target interface {
	// Put sets key to value.
	Put(ctx context.Context, key, value []byte) error
	// Get reads key, linearizable or, with serializable, from the serving
	// node's local state. A missing key returns ErrNotFound.
	Get(ctx context.Context, key []byte, serializable bool) (value []byte, err error)
	// CAS sets key to new if its value is old, in one atomic step; a nil
	// old means the key must not exist. It reports whether the swap
	// happened: a compare that did not hold is not an error.
	CAS(ctx context.Context, key, old, new []byte) (swapped bool, err error)
	// Range reads up to limit pairs of [start, end).
	Range(ctx context.Context, start, end []byte, limit int64) error
}

// ErrNotFound is returned by Target.Get for a missing key.
var ErrNotFound = errors.New("key not found")

// KVStore is the Target of one kvstore endpoint, through the generated
// Connect client. Requests go to that endpoint only: there is no failover,
// so that what is measured is the node that was asked for.
type KVStore struct {
	kv kvstorev1connect.KVServiceClient
}

// NewKVStore returns the Target of the kvstore node at baseURL, sending
// through hc with the given Connect options (connect.WithGRPC() and so on).
func NewKVStore(hc *http.Client, baseURL string, opts ...connect.ClientOption) *KVStore {
	return &KVStore{kv: kvstorev1connect.NewKVServiceClient(hc, baseURL, opts...)}
}

// Put implements Target.
func (s *KVStore) Put(ctx context.Context, key, value []byte) error {
	_, err := s.kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: key, Value: value}))
	return err
}

// Get implements Target.
func (s *KVStore) Get(ctx context.Context, key []byte, serializable bool) ([]byte, error) {
	resp, err := s.kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: key, Consistency: consistency(serializable)}))
	if connect.CodeOf(err) == connect.CodeNotFound {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	v := resp.Msg.GetKv().GetValue()
	if v == nil {
		v = []byte{} // found, empty: not the nil of a missing key for CAS
	}
	return v, nil
}

// CAS implements Target with a Txn: compare the value (or, for a nil old,
// version 0), then put.
func (s *KVStore) CAS(ctx context.Context, key, old, new []byte) (bool, error) {
	resp, err := s.kv.Txn(ctx, connect.NewRequest(casTxn(key, old, new)))
	if err != nil {
		return false, err
	}
	return resp.Msg.GetSucceeded(), nil
}

func consistency(serializable bool) kvstorev1.Consistency {
	if serializable {
		return kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE
	}
	return kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE
}

// casTxn compares the value (or, for a nil old, version 0), then puts.
func casTxn(key, old, new []byte) *kvstorev1.TxnRequest {
	cmp := &kvstorev1.Compare{Key: key, Result: kvstorev1.CompareResult_COMPARE_RESULT_EQUAL}
	if old == nil {
		cmp.Target = &kvstorev1.Compare_Version{Version: 0}
	} else {
		cmp.Target = &kvstorev1.Compare_Value{Value: old}
	}
	return &kvstorev1.TxnRequest{
		Compare: []*kvstorev1.Compare{cmp},
		Success: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: key, Value: new}}}},
	}
}

// Range implements Target, with linearizable reads.
func (s *KVStore) Range(ctx context.Context, start, end []byte, limit int64) error {
	_, err := s.kv.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: start, RangeEnd: end, Limit: limit}))
	return err
}

// DialOptions configures DialKVStore.
type DialOptions struct {
	// Protocol is "grpc" (the default, through grpc-go), "connect" or
	// "grpcweb" (through Connect's client).
	Protocol string
	// Conns is the number of independent clients; default 1. With gRPC
	// each holds one HTTP/2 connection per endpoint; with Connect and
	// gRPC-Web, which use HTTP/1.1, each is a pool that opens a connection
	// per request in flight.
	Conns int
	// MaxIdlePerHost is how many idle connections a pool keeps per
	// endpoint; set it to the number of request loops so that HTTP/1.1
	// does not close and reopen connections. Default 256.
	MaxIdlePerHost int
	// DialTimeout bounds one TCP connection attempt; default 2s.
	DialTimeout time.Duration
	// TLS, when set, is the TLS configuration of every connection, and
	// "host:port" endpoints mean https.
	TLS *tls.Config
	// Token, if set, goes with every call (an authentication token: the
	// `token` gRPC metadata, or Authorization: Bearer over Connect). It is
	// not renewed: a run must end before it expires.
	Token string
}

// DialKVStore returns Conns × len(endpoints) Targets, ordered so that
// handing them out round-robin spreads request loops over the endpoints
// first and the connection pools second, and a function that closes the
// idle connections. Endpoints are "host:port" or http(s) URLs.
func DialKVStore(endpoints []string, o DialOptions) ([]Target, func(), error) {
	if len(endpoints) == 0 {
		return nil, nil, errors.New("bench: no endpoints")
	}
	urls := make([]string, len(endpoints))
	for i, e := range endpoints {
		if o.TLS != nil && !strings.Contains(e, "://") {
			e = "https://" + strings.TrimSpace(e)
		}
		u, err := client.EndpointURL(e)
		if err != nil {
			return nil, nil, fmt.Errorf("bench: endpoint %q: %w", e, err)
		}
		urls[i] = u
	}
	var opts []connect.ClientOption
	if o.Token != "" {
		opts = append(opts, connect.WithInterceptors(bearer(o.Token)))
	}
	switch strings.ToLower(o.Protocol) {
	case "grpc", "":
		return dialGRPC(urls, o)
	case "connect":
	case "grpcweb", "grpc-web":
		opts = append(opts, connect.WithGRPCWeb())
	default:
		return nil, nil, fmt.Errorf("bench: unknown protocol %q (want grpc, connect or grpcweb)", o.Protocol)
	}
	conns := max(o.Conns, 1)
	idle := o.MaxIdlePerHost
	if idle <= 0 {
		idle = 256
	}
	dt := o.DialTimeout
	if dt <= 0 {
		dt = 2 * time.Second
	}
	var transports []*http.Transport
	var targets []Target
	for range conns {
		t := newTransport(dt, idle)
		if o.TLS != nil {
			t.TLSClientConfig = o.TLS.Clone()
		}
		transports = append(transports, t)
		hc := &http.Client{Transport: t}
		for _, u := range urls {
			targets = append(targets, NewKVStore(hc, u, opts...))
		}
	}
	closeIdle := func() {
		for _, t := range transports {
			t.CloseIdleConnections()
		}
	}
	return targets, closeIdle, nil
}

// newTransport is the transport of api/client, with more idle connections.
func newTransport(dialTimeout time.Duration, idle int) *http.Transport {
	p := new(http.Protocols)
	p.SetHTTP2(true) // TLS endpoints negotiate HTTP/2 through ALPN
	p.SetHTTP1(true)
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		DialContext:         d.DialContext,
		Protocols:           p,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        0, // no limit across hosts
		MaxIdleConnsPerHost: idle,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
}

// ConnectCode names the Connect code of err ("unavailable",
// "deadline_exceeded", ...), also for grpc-go's errors, "unknown" for
// errors that carry none.
func ConnectCode(err error) string {
	if st, ok := status.FromError(err); ok && st.Code() != codes.OK {
		return connect.Code(st.Code()).String()
	}
	return connect.CodeOf(err).String()
}

// bearer sends a token with every Connect call.
type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+string(b))
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
