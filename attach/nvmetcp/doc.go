// Package nvmetcp owns the NVMe/TCP transport and a target (controller
// side) that serves block devices to NVMe/TCP hosts: the Linux kernel's
// initiator (nvme discover, nvme connect -t tcp) uses a subsystem as a
// disk. The agent (package attach) serves every volume as a subsystem
// through it and supplies the devices behind them.
//
// # What it owns
//
//   - pdu.go: a pure codec of the transport's PDUs (ICReq/ICResp,
//     CapsuleCmd/CapsuleResp, H2CData/C2HData, R2T, H2CTermReq/C2HTermReq),
//     the checks of a received PDU's framing, and CRC32C digests.
//   - nvme.go: a pure codec of commands, completions, status codes and
//     Connect data.
//   - identify.go: pure builders of Identify data and log pages, the
//     discovery log included.
//   - conn.go: one connection (one queue): the IC exchange, the reader,
//     the admin worker, a goroutine per I/O command, and the batching
//     writer; R2T transfers; termination on a protocol violation.
//   - controller.go: controllers (one per admin Connect): properties,
//     admin commands, features, keep-alive, asynchronous events, and the
//     controller's life; io.go: the NVM I/O commands.
//   - target.go: Target (its configuration), Serve and ServeDiscovery,
//     Close, the bound on connections, controller IDs and the discovery
//     log.
//   - host.go: a minimal host (initiator) for tests, end-to-end tests and
//     load generators.
//
// # What the target promises
//
// Transport: ICResp echoes the digests the host asks for (header and data
// CRC32C), CPDA 0, MAXH2CDATA = Target.MaxTransferBytes; C2H data is
// aligned to the host's HPDA. Commands carry data in the capsule (up to
// Target.InCapsuleDataBytes on I/O queues, 8 KiB for fabrics and admin
// commands) or by one R2T for the whole transfer; reads answer with one
// C2HData PDU and then a CapsuleResp. Each queue is one connection and
// admits the entries its Connect asked for (at most Target.MaxQueueSize).
//
// Limits: each connection's data buffers in flight are bounded
// (Target.MaxBytesInFlight), and Target.Shared bounds every connection's
// together; a command that does not fit waits for memory to be returned
// before its R2T is sent or its read is run, so a host is slowed, never
// allowed to grow the target's memory. At most Target.MaxConnections
// connections are served at once; one more gets its ICResp, then its
// Connect is answered Connect Controller Busy (status 0x181, retry
// allowed) and the connection is closed, counted (Target.Stats) and
// logged. The connections already open are not disturbed.
//
// Controllers: the dynamic model (admin Connect with CNTLID 0xFFFF gets a
// fresh ID); I/O Connects must name that ID with the admin queue's host
// NQN, host ID and subsystem NQN, and a QID up to the number of queues
// granted. Properties CAP, VS (1.3), CC and CSTS; CC.EN readies the
// controller, CC.SHN flushes the device and reports shutdown complete,
// clearing CC.EN deletes the I/O queues. Admin commands: Identify (CNS 0,
// 1, 2, 3, 5, 6, 7, 8), Get Log Page (error, SMART / health, firmware
// slot, changed namespace list, commands supported and effects,
// discovery), Set/Get Features (number of queues, keep-alive timer, async
// event configuration, volatile write cache, temperature threshold), Keep
// Alive, Asynchronous Event Request (four held; a namespace change raises
// a notice), Abort (a no-op). Every command on any queue counts as
// keep-alive traffic; a controller idle for its KATO is torn down with
// all its connections. The controller ends when its admin connection
// does.
//
// Namespace: NSID 1, NGUID and UUID derived from Namespace.ID, one LBA
// format (Target.BlockSize), shared (NMIC), deallocated blocks read as
// zeroes. I/O: Read, Write (FUA passed to the device), Flush, Write
// Zeroes (DEAC allows a hole), Dataset Management (deallocate); MDTS is
// Target.MaxTransferBytes and a larger transfer gets Invalid Field.
//
// Discovery: every listener answers the discovery subsystem
// (nqn.2014-08.org.nvmexpress.discovery) as well as I/O subsystems; its
// log lists each subsystem (Subsystems.List, filtered by AllowHost) on
// every I/O port (Serve) and the current discovery subsystem on the port
// asked. ServeDiscovery adds a port that is not listed for I/O.
//
// Errors: a command the target can answer with a status (unknown opcode,
// LBA range past the namespace, a transfer over MDTS, a bad SGL, a device
// error) gets it and the queue stays usable. Device errors map as
// blockdev's classes say (see controller.statusOf). A PDU whose framing
// cannot be trusted (bad type, length or flags, a header or data digest
// mismatch, H2CData that no R2T asked for, more commands than the queue
// holds) ends that connection with a C2HTermReq; nothing a host sends
// ends the target.
//
// Not implemented: TLS, authentication, ANA, reservations, fused
// commands, metadata, PRP data pointers, the static controller model,
// more than one namespace per subsystem, the C2HData SUCCESS flag.
//
// # Concurrency contract for the caller
//
// Subsystems.List and Subsystems.Open are called from connection
// goroutines (Open during an admin Connect, List for a discovery log
// page). A Namespace's Device is used by every queue of one controller,
// from up to one goroutine per outstanding command, and is closed once
// the controller has ended and none of its calls is running. Its calls
// get a context canceled when their connection is torn down; they should
// return promptly then, because Target.Close waits for them.
//
// # Imports
//
// The standard library, attach/blockdev for the devices it serves,
// internal/bufpool and internal/inflight.
package nvmetcp
