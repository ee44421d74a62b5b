package consensus

import (
	"errors"
	"fmt"
	"strings"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage/diskspace"
)

// The space quota, as etcd's --quota-backend-bytes: a member whose
// key-value state is larger than its quota raises its NOSPACE alarm
// through raft, with a reason that starts with quotaPrefix. The size is
// the state's logical size (storage.KV.LogicalBytes: every record kept,
// history included, as a compaction leaves it), not the size of Badger's
// files: those shrink only when Badger gets to it (a memtable flush, its
// own compactions, value log GC), so an operator who deleted and
// compacted could not bring them under the quota on demand (etcd has
// defrag for that; Badger has nothing to call). The files are the disk
// guard's business (diskspace). Every node then refuses writes that
// add data, as for a full disk; reads, deletes and compaction go on.
// Unlike a full disk's alarm, a quota's stays once the state is back under
// the quota, until an operator disarms it (after deleting keys and
// compacting, which flattens Badger's tree and collects its value log
// garbage), and a disarm is refused while the serving leader's state is
// still over its quota; a follower still over raises its alarm again.

// quotaPrefix starts the reason of a NOSPACE alarm raised by the quota.
const quotaPrefix = "quota: "

// ErrOverQuota refuses a disarm of the NOSPACE alarm while the key-value
// state is still over its quota.
var ErrOverQuota = errors.New("the key-value state is still over its space quota")

func isQuotaReason(reason string) bool { return strings.HasPrefix(reason, quotaPrefix) }

// StateBytes is the key-value state's logical size, the measure the
// quota compares with QuotaBytes.
func (r *Replica) StateBytes() int64 { return r.kv.LogicalBytes() }

// QuotaBytes is the space quota of the key-value state; 0 for none.
func (r *Replica) QuotaBytes() int64 { return r.quota }

// overQuota tells whether the key-value state takes more than its quota,
// and says so in the form of an alarm's reason.
func (r *Replica) overQuota() (bool, string) {
	if r.quota <= 0 {
		return false, ""
	}
	size := r.kv.LogicalBytes()
	if size <= r.quota {
		return false, ""
	}
	return true, fmt.Sprintf("%sthe key-value state of member %s holds %s, more than its quota of %s (--quota-bytes); delete keys and compact, then `kvctl alarm disarm`",
		quotaPrefix, r.id, bytesText(size), bytesText(r.quota))
}

// mayDisarm refuses a DEACTIVATE that would clear this node's own NOSPACE
// alarm (a disarm names no member) while its state is over its quota.
func (r *Replica) mayDisarm(req *kvstorev1.AlarmRequest) error {
	if t := req.GetAlarm(); t != kvstorev1.AlarmType_ALARM_TYPE_UNSPECIFIED && t != kvstorev1.AlarmType_ALARM_TYPE_NOSPACE {
		return nil
	}
	if m := req.GetMemberId(); m != "" && m != r.id {
		return nil
	}
	if over, _ := r.overQuota(); !over {
		return nil
	}
	// A compaction applied just before may not be counted yet.
	size, err := r.kv.RecountLogicalBytes()
	if err != nil {
		return err
	}
	if size > r.quota {
		return fmt.Errorf("%w: member %s holds %s, more than its quota of %s; delete keys and compact first",
			ErrOverQuota, r.id, bytesText(size), bytesText(r.quota))
	}
	return nil
}

// bytesText writes a size in MiB, or in bytes below one.
func bytesText(n int64) string {
	if n < diskspace.MiB {
		return fmt.Sprintf("%d bytes", n)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/diskspace.MiB)
}
