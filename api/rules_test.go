package api_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/node"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// TestSameRulesOnBothStacks: a call from another cluster, and a call that
// came without a deadline and outlived the default one, get the same code
// and message whichever stack serves them: Connect's (Connect, gRPC-Web,
// JSON, on net/http) or grpc-go's (gRPC on h2c). A request over the size
// limit gets the same code, and a message naming its size and the limit:
// each stack's library refuses it while reading, before any of our code
// runs, in its own words.
func TestSameRulesOnBothStacks(t *testing.T) {
	ctx := testCtx(t)
	start := func(cfg node.Config) *node.Node {
		t.Helper()
		cfg.DataDir, cfg.Listen, cfg.Version = t.TempDir(), "127.0.0.1:0", testVersion
		cfg.HeartbeatTimeout, cfg.ElectionTimeout = 100*time.Millisecond, 100*time.Millisecond
		n, err := node.Start(ctx, cfg)
		if err != nil {
			t.Fatalf("start node: %v", err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := n.Close(ctx); err != nil {
				t.Errorf("close node: %v", err)
			}
		})
		if err := n.WaitReady(ctx); err != nil {
			t.Fatalf("wait ready: %v", err)
		}
		return n
	}
	clients := func(n *node.Node, opts ...connect.ClientOption) map[string]kvstorev1connect.KVServiceClient {
		with := func(o ...connect.ClientOption) []connect.ClientOption { return append(o, opts...) }
		return map[string]kvstorev1connect.KVServiceClient{
			"connect":        kvstorev1connect.NewKVServiceClient(http1Client(t), n.URL(), with()...),
			"connect+json":   kvstorev1connect.NewKVServiceClient(http1Client(t), n.URL(), with(connect.WithProtoJSON())...),
			"grpc-web":       kvstorev1connect.NewKVServiceClient(http1Client(t), n.URL(), with(connect.WithGRPCWeb())...),
			"grpc (grpc-go)": kvstorev1connect.NewKVServiceClient(h2cClient(t), n.URL(), with(connect.WithGRPC())...),
		}
	}
	// messages makes the call with each client and returns the messages
	// of the errors, all of code want.
	messages := func(what string, call func(kvstorev1connect.KVServiceClient) error, cs map[string]kvstorev1connect.KVServiceClient, want connect.Code) map[string]string {
		t.Helper()
		out := map[string]string{}
		for name, c := range cs {
			err := call(c)
			var ce *connect.Error
			if !errors.As(err, &ce) || ce.Code() != want {
				t.Errorf("%s over %s: %v, want %v", what, name, err, want)
				continue
			}
			out[name] = ce.Message()
		}
		return out
	}
	same := func(what string, call func(kvstorev1connect.KVServiceClient) error, cs map[string]kvstorev1connect.KVServiceClient, want connect.Code) {
		t.Helper()
		got := messages(what, call, cs, want)
		for name, msg := range got {
			if msg == "" || msg != got["connect"] {
				t.Errorf("%s over %s: %q; over connect: %q", what, name, msg, got["connect"])
			}
		}
	}
	put := func(ctx context.Context, req *kvstorev1.PutRequest) func(kvstorev1connect.KVServiceClient) error {
		return func(c kvstorev1connect.KVServiceClient) error {
			_, err := c.Put(ctx, connect.NewRequest(req))
			return err
		}
	}

	n := start(node.Config{Limits: api.Limits{MaxRequestBytes: 64 << 10}})
	big := &kvstorev1.PutRequest{Key: []byte("k"), Value: make([]byte, 100<<10)}
	for name, msg := range messages("a 100 KiB put, the limit 64 KiB", put(ctx, big), clients(n), connect.CodeResourceExhausted) {
		size := strconv.Itoa(proto.Size(big))
		if name == "connect+json" {
			size = "" // JSON's size is its own
		}
		if !strings.Contains(msg, size) || !strings.Contains(msg, "65536") {
			t.Errorf("a 100 KiB put over %s: %q, want its size (%s) and the limit (65536)", name, msg, size)
		}
	}

	stranger := connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set(api.ClusterIDHeader, "another-cluster")
			return next(ctx, req)
		}
	}))
	same("a put from another cluster", put(ctx, &kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v")}), clients(n, stranger), connect.CodeFailedPrecondition)

	slow := start(node.Config{RequestTimeout: time.Nanosecond})
	same("a put without a deadline, the default 1 ns", put(context.Background(), &kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v")}), clients(slow), connect.CodeDeadlineExceeded)
}
