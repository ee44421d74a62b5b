package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/kvstore/kvstore/node"
)

// runDev starts a throwaway cluster in this process, for trying things out:
// nodes on consecutive ports of 127.0.0.1, data in a temporary directory
// removed at exit.
func runDev(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("kvd dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	nodes := fs.Int("nodes", 3, "how many nodes")
	port := fs.Int("port", 7379, "port of the first node; the others follow")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: kvd dev [flags]\n\nStarts a throwaway cluster on 127.0.0.1 in one process; Ctrl-C stops it\nand deletes its data.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *nodes < 1 || *nodes > 9 {
		fmt.Fprintln(stderr, "kvd dev: --nodes must be 1 to 9")
		return 2
	}
	logger, err := newLogger(stderr, "text", *logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "kvd dev: %v\n", err)
		return 2
	}
	dir, err := os.MkdirTemp("", "kvd-dev-")
	if err != nil {
		fmt.Fprintf(stderr, "kvd dev: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	seed := net.JoinHostPort("127.0.0.1", strconv.Itoa(*port))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var running []*node.Node
	stopAll := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stopCluster(ctx, running, logger)
	}
	for i := range *nodes {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(*port+i))
		n, err := node.Start(ctx, node.Config{
			DataDir:         filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			Listen:          addr,
			Name:            fmt.Sprintf("n%d", i+1),
			Join:            []string{seed},
			BootstrapExpect: *nodes,
			FastGossip:      true,
			Logger:          logger.With("dev_node", i+1),
			Version:         version(),
		})
		if err != nil {
			fmt.Fprintf(stderr, "kvd dev: start node %d on %s: %v\n", i+1, addr, err)
			stopAll()
			return 1
		}
		running = append(running, n)
	}
	for _, n := range running {
		if err := n.WaitReady(ctx); err != nil {
			fmt.Fprintf(stderr, "kvd dev: %v\n", err)
			stopAll()
			return 1
		}
	}
	endpoints := ""
	for i, n := range running {
		if i > 0 {
			endpoints += ","
		}
		endpoints += n.Addr()
	}
	logger.Info("dev cluster ready; Ctrl-C stops it", "nodes", *nodes, "endpoints", endpoints, "data_dir", dir)
	fmt.Fprintf(stderr, "dev cluster of %d nodes ready: export KVCTL_ENDPOINTS=%s\n", *nodes, endpoints)
	<-sigs
	go func() {
		<-sigs
		os.Exit(1)
	}()
	stopAll()
	return 0
}

// stopCluster stops every node of the dev cluster: the followers leave one
// by one, then the leader stops alone. Closing a follower under a running
// leader would have the leader fail to reach it until it stopped too, an
// ERROR line each time.
func stopCluster(ctx context.Context, nodes []*node.Node, logger *slog.Logger) {
	var leader *node.Node
	for _, n := range nodes {
		if id, _ := n.Leader(); id == n.ID() {
			leader = n
			continue
		}
		if err := n.Leave(ctx); err != nil {
			logger.Warn("dev: leave", "node", n.ID(), "error", err)
		}
		if err := n.Close(ctx); err != nil {
			logger.Warn("dev: stop", "node", n.ID(), "error", err)
		}
	}
	if leader != nil {
		if err := leader.Close(ctx); err != nil {
			logger.Warn("dev: stop", "node", leader.ID(), "error", err)
		}
	}
}
