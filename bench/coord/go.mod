module github.com/kvstore/kvstore/bench/coord

go 1.26.0

require (
	connectrpc.com/connect v1.21.1
	github.com/kvstore/kvstore v0.0.0
)

require google.golang.org/protobuf v1.36.12 // indirect

replace github.com/kvstore/kvstore => ../..
