// Package chaos is kvstore's failure suite on real networks. TestChaos runs
// the container image as five nodes on a bridge network of its own, drives
// six clients against them, injects each fault under that load (kills,
// pauses, iptables partitions and packet loss and tc rate limits inside the
// containers' network namespaces, a full tmpfs, a power cut of the
// processes, a rolling restart), and checks every fault's history with
// porcupine (node/nodetest/lincheck) and every acknowledged write's
// presence, then prints one row per fault. BenchmarkStartToFirstRead
// times the image's start.
//
// Run it with deploy/chaos.sh (the short schedule; --duration for the long
// one). It needs Docker, root, and iptables, tc and nsenter on the host.
//
// With --groups 2 the workload runs over two raft groups: once the nodes
// are healthy, the suite creates a data group of three replicas, placed by
// the meta leader, over the g/ prefix (empty then: no key of the workload
// is written before), and each phase keeps half its registers and half its
// clients' unique keys under g/, so porcupine and the lost-write checks
// cover keys of both groups. The schedule gains "kill data group leader",
// and a healthy cluster also has a leader of the data group.
//
// What must hold: the suite touches only what it made. Every container,
// volume and network carries the label kvstore.chaos=<run id> and is
// removed by that label when the test ends, pass or fail; faults aim only
// at the run's own containers; clients dial only the run's containers. A
// run killed before its cleanup (SIGKILL of go test) leaves them behind:
// remove them with
//
//	docker rm -f -v $(docker ps -aq -f label=kvstore.chaos)
//	docker network rm $(docker network ls -q -f label=kvstore.chaos)
//	docker volume rm $(docker volume ls -q -f label=kvstore.chaos)
//	umount /tmp/kvchaos-*
//
// It lives in a module of its own (deploy/chaos/go.mod), as bench/etcddriver
// does, so that the Docker client's dependencies stay out of the main
// module.
package chaos
