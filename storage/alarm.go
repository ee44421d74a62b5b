package storage

import (
	"encoding/binary"
	"fmt"
)

// alarmPrefix keys raised alarms: alarmPrefix, type (4 bytes big endian),
// member id -> the reason. They are replicated state like any other: they
// travel in snapshots and survive restarts.
const alarmPrefix = 'a'

// Alarm is trouble on one member that the whole cluster acts on (a full
// disk, a state that disagrees with the others').
type Alarm struct {
	// Type is the API's alarm type.
	Type   int32
	Member string
	Reason string
}

func alarmKey(typ int32, member string) []byte {
	k := make([]byte, 5, 5+len(member))
	k[0] = alarmPrefix
	binary.BigEndian.PutUint32(k[1:], uint32(typ))
	return append(k, member...)
}

// SetAlarm raises (or re-raises with a new reason) an alarm at the
// current revision.
func (b *Batch) SetAlarm(a Alarm) error {
	return b.setMeta(alarmKey(a.Type, a.Member), append([]byte{}, a.Reason...))
}

// ClearAlarm drops an alarm at the current revision.
func (b *Batch) ClearAlarm(typ int32, member string) error {
	return b.setMeta(alarmKey(typ, member), nil)
}

// Alarms lists the alarms raised at the applied revision, ordered by type
// and member.
func (s *KV) Alarms() ([]Alarm, error) {
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	txn := s.db.NewTransactionAt(s.applied.Load(), false)
	defer txn.Discard()
	var out []Alarm
	err := scanPrefix(txn, []byte{alarmPrefix}, func(k, v []byte) error {
		if len(k) < 5 {
			return fmt.Errorf("alarm key %q: %w", k, ErrCorrupt)
		}
		out = append(out, Alarm{Type: int32(binary.BigEndian.Uint32(k[1:5])), Member: string(k[5:]), Reason: string(v)})
		return nil
	})
	return out, err
}

// DropAlarms removes every alarm, with its history, for a store restored
// from a backup into a new cluster: the alarms named members of the old
// one. No other call may run meanwhile.
func (s *KV) DropAlarms() error {
	if list, err := s.Alarms(); err != nil || len(list) == 0 {
		// Mostly none: spare Badger's DropPrefix, which flushes the
		// memtables and rewrites the tables that hold the prefix.
		return err
	}
	s.restoring.Lock()
	defer s.restoring.Unlock()
	if err := s.db.DropPrefix([]byte{alarmPrefix}); err != nil {
		return fmt.Errorf("drop alarms: %w", err)
	}
	return nil
}
