package etcd_test

import (
	"context"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// The same reads and writes through both faces of one node, over one gRPC
// connection each: what the etcd face's translation costs.
//
//	go test -run '^$' -bench . -benchtime 3s ./api/etcd
func BenchmarkFaces(b *testing.B) {
	c := nodetest.NewCluster(b, 1)
	ctx := context.Background()
	c.Leader(ctx)
	conn, err := grpc.NewClient(c.Nodes()[0].Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	etcdKV, ours := pb.NewKVClient(conn), kvstorev1.NewKVServiceClient(conn)
	key, value := []byte("bench-key"), make([]byte, 256)
	if _, err := ours.Put(ctx, &kvstorev1.PutRequest{Key: key, Value: value}); err != nil {
		b.Fatal(err)
	}
	run := func(b *testing.B, f func() error) {
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := f(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.Run("get/kvstore.v1", func(b *testing.B) {
		run(b, func() error {
			_, err := ours.Get(ctx, &kvstorev1.GetRequest{Key: key, Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE})
			return err
		})
	})
	b.Run("get/etcd", func(b *testing.B) {
		run(b, func() error { _, err := etcdKV.Range(ctx, &pb.RangeRequest{Key: key, Serializable: true}); return err })
	})
	b.Run("put/kvstore.v1", func(b *testing.B) {
		run(b, func() error { _, err := ours.Put(ctx, &kvstorev1.PutRequest{Key: key, Value: value}); return err })
	})
	b.Run("put/etcd", func(b *testing.B) {
		run(b, func() error { _, err := etcdKV.Put(ctx, &pb.PutRequest{Key: key, Value: value}); return err })
	})
	b.Run("range100/kvstore.v1", func(b *testing.B) {
		run(b, func() error {
			_, err := ours.Range(ctx, &kvstorev1.RangeRequest{Key: []byte("bench-"), Prefix: true, Limit: 100, Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE})
			return err
		})
	})
	b.Run("range100/etcd", func(b *testing.B) {
		run(b, func() error {
			_, err := etcdKV.Range(ctx, &pb.RangeRequest{Key: []byte("bench-"), RangeEnd: []byte("bench."), Limit: 100, Serializable: true})
			return err
		})
	})
}
