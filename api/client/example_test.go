package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/api/client"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// These examples need a running cluster, so they are compiled but not run.

func Example() {
	c, err := client.New([]string{"10.0.0.1:7379", "10.0.0.2:7379", "10.0.0.3:7379"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	if _, err := c.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{
		Key:   []byte("greeting"),
		Value: []byte("hello"),
	})); err != nil {
		log.Fatalf("put: %v", err)
	}
	resp, err := c.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("greeting")}))
	if err != nil {
		log.Fatalf("get: %v", err)
	}
	fmt.Printf("%s\n", resp.Msg.GetKv().GetValue())
}

func ExampleNew_grpc() {
	// gRPC over cleartext HTTP/2 to the nodes; full URLs work too.
	c, err := client.New(
		[]string{"http://10.0.0.1:7379", "http://10.0.0.2:7379"},
		client.WithProtocol(client.ProtocolGRPC),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.Cluster.Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.Msg.GetNodeId(), st.Msg.GetRaftState(), "leader:", st.Msg.GetLeaderId())
}

func ExampleClient_RangeAll() {
	c, err := client.New([]string{"127.0.0.1:7379"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Every key under "users/", read page by page at one revision.
	resp, err := c.RangeAll(ctx, &kvstorev1.RangeRequest{Key: []byte("users/"), Prefix: true})
	if err != nil {
		log.Fatal(err)
	}
	for _, kv := range resp.GetKvs() {
		fmt.Printf("%s = %s\n", kv.GetKey(), kv.GetValue())
	}
}

// A missing key answers connect.CodeNotFound.
func ExampleClient_notFound() {
	c, err := client.New([]string{"127.0.0.1:7379"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = c.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("nope")}))
	switch {
	case connect.CodeOf(err) == connect.CodeNotFound:
		fmt.Println("no such key")
	case err != nil:
		log.Fatal(err)
	}
}

// Compare-and-swap: set "config" to v2 only if it still holds v1.
func ExampleClient_compareAndSwap() {
	c, err := client.New([]string{"127.0.0.1:7379"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	key := []byte("config")
	resp, err := c.KV.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{
		Compare: []*kvstorev1.Compare{{
			Key:    key,
			Result: kvstorev1.CompareResult_COMPARE_RESULT_EQUAL,
			Target: &kvstorev1.Compare_Value{Value: []byte("v1")},
		}},
		Success: []*kvstorev1.RequestOp{{
			Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: key, Value: []byte("v2")}},
		}},
	}))
	var cerr *connect.Error
	if errors.As(err, &cerr) && cerr.Code() == connect.CodeUnavailable {
		// A write is not retried once it may have reached a node: read
		// the key back before deciding to send it again.
		log.Fatalf("txn outcome unknown: %v", err)
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Println("swapped:", resp.Msg.GetSucceeded())
}
