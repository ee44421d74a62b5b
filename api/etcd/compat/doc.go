// Package compat checks kvstore's etcd face with etcd's own Go client,
// go.etcd.io/etcd/client/v3, and its concurrency package (Mutex, Election,
// STM), against in-process clusters from node/nodetest. It is a module of
// its own so that kvstore's main module does not depend on etcd's client;
// that this test binary links etcd's client and nodetest together also
// checks that their protobuf registrations do not collide.
package compat
