package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// RangeAll reads the whole range req describes, following the pages the
// server cuts it into, and returns it as one RangeResponse.
//
// req.Limit is the total number of pairs wanted; 0 wants all of them. Every
// page after the first is read at the revision of the first page (unless
// req.Revision already names one), so the result is one consistent snapshot
// however many writes land while it is read.
//
// The result has the first page's header and count, every pair read, and
// More and NextKey as the last page left them: More is true only when
// req.Limit stopped the reading before the end of the range. A request with
// CountOnly is sent once and its answer returned as is. req is not modified.
func (c *Client) RangeAll(ctx context.Context, req *kvstorev1.RangeRequest) (*kvstorev1.RangeResponse, error) {
	if req == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("client: nil range request"))
	}
	page := proto.CloneOf(req)
	total := req.GetLimit()
	if total < 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("client: negative limit %d", total))
	}
	var all *kvstorev1.RangeResponse
	for {
		if total > 0 && all != nil {
			page.Limit = total - int64(len(all.Kvs))
		}
		resp, err := c.KV.Range(ctx, connect.NewRequest(page))
		if err != nil {
			return nil, err
		}
		msg := resp.Msg
		if all == nil {
			all = msg
			if req.GetCountOnly() {
				return all, nil
			}
			if page.Revision == 0 {
				page.Revision = msg.GetHeader().GetRevision()
			}
		} else {
			all.Kvs = append(all.Kvs, msg.Kvs...)
			all.More, all.NextKey = msg.More, msg.NextKey
		}
		if total > 0 && int64(len(all.Kvs)) >= total {
			if int64(len(all.Kvs)) > total {
				// The server returned more than asked: cut, and say where
				// the rest begins.
				all.More, all.NextKey = true, all.Kvs[total].GetKey()
				all.Kvs = all.Kvs[:total]
			}
			return all, nil
		}
		if !msg.GetMore() {
			return all, nil
		}
		// Guard against a server that would make this loop forever.
		if len(msg.GetNextKey()) == 0 || bytes.Compare(msg.GetNextKey(), page.GetKey()) <= 0 {
			return nil, fmt.Errorf("client: range page at key %q says more but next_key %q does not advance", page.GetKey(), msg.GetNextKey())
		}
		if page.Prefix {
			// A prefix range continues as the explicit range
			// [next_key, end of prefix): with prefix still set, next_key
			// would become the prefix.
			page.RangeEnd = PrefixEnd(req.GetKey())
			page.Prefix = false
		}
		page.Key = msg.GetNextKey()
	}
}

// PrefixEnd returns the range_end that, with key = prefix, ranges over every
// key starting with prefix: prefix with its last byte below 0xff incremented
// and what follows it dropped. When there is no such byte (prefix is empty
// or all 0xff) it returns "\x00", which means "to the end of the keyspace".
func PrefixEnd(prefix []byte) []byte {
	end := bytes.Clone(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}
