package chaos

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// BenchmarkStartToFirstRead measures the image's start: from creating a
// container (what docker run does) to the first linearizable read it
// serves, on a new one-node cluster with an empty volume.
//
//	cd deploy/chaos && go test -run '^$' -bench StartToFirstRead -benchtime 5x .
func BenchmarkStartToFirstRead(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	netName := "kvchaos-start-" + time.Now().Format("150405.000")
	labels := map[string]string{label: "start"}
	if _, err := cli.NetworkCreate(ctx, netName, network.CreateOptions{Driver: "bridge", Labels: labels}); err != nil {
		b.Fatal(err)
	}
	defer cli.NetworkRemove(context.Background(), netName)
	hc := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{Timeout: 200 * time.Millisecond}).DialContext}}

	for b.Loop() {
		resp, err := cli.ContainerCreate(ctx, &container.Config{Image: *flagImage, Labels: labels},
			&container.HostConfig{}, &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{netName: {}}}, nil, "")
		if err != nil {
			b.Fatal(err)
		}
		if err := cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
			b.Fatal(err)
		}
		info, err := cli.ContainerInspect(ctx, resp.ID)
		if err != nil {
			b.Fatal(err)
		}
		kv := kvstorev1connect.NewKVServiceClient(hc, "http://"+net.JoinHostPort(info.NetworkSettings.Networks[netName].IPAddress, "7379"))
		for {
			rctx, rcancel := context.WithTimeout(ctx, time.Second)
			_, err := kv.Get(rctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("k"), Consistency: kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE}))
			rcancel()
			if err == nil || connect.CodeOf(err) == connect.CodeNotFound {
				break // served
			}
			if ctx.Err() != nil {
				b.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		b.StopTimer()
		if err := cli.ContainerRemove(ctx, resp.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
