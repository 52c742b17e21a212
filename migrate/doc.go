// Package migrate owns the attachment handoff: which host may write a
// volume, and how that right passes from one host to another without a
// write from the old host landing after the new one has begun.
//
// # The model
//
// A volume's attachment record (Attachment, kept in its volume group by
// headnode) names the host that may write and a generation; a prepared
// migration names the destination and the generation it will get. Every
// generation is issued once (Attachment.Last only grows), so a session
// (host, generation) that is neither attached nor prepared is dead for
// good. Agents carry their session on every request.
//
// The volume's primary head node runs a Gate, and only it changes the
// record, so its view is authoritative once loaded. The Gate admits the
// attached session's requests, refuses a dead session's writes, and
// starts the switchover when the prepared destination sends its first
// write or flush: new writes wait, the writes already admitted complete,
// then one transaction commits the destination as attached with its
// generation, then the held requests are decided against the new record.
// Admin changes (attach, detach, prepare, abort, switch now) pass through
// the same Gate.
//
// # What it may import
//
// Gate is a state machine without I/O (STYLE.md §1): it reads no clock,
// starts no goroutine and imports only the standard library. headnode
// drives it: it loads and commits the record through txn and releases
// the requests the Gate decides.
package migrate
