package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
)

// maxDiscardOptionBytes is the longest option data the server skips to
// answer ERR_TOO_BIG; a client announcing more is dropped.
const maxDiscardOptionBytes = 16 << 20

// errAborted ends a negotiation the client closed with NBD_OPT_ABORT.
var errAborted = errors.New("nbd: client aborted the negotiation")

// session is what a successful negotiation hands to the transmission
// phase.
type session struct {
	name    string
	backend Backend
	state   exportState
}

// negotiation is the option haggling of one connection (fixed newstyle,
// NOTLS). It reads options from r and writes replies to w, flushing w
// after each option's replies.
type negotiation struct {
	exports Exports
	cfg     config
	r       *bufio.Reader
	w       *bufio.Writer
	log     *slog.Logger
	refuse  string // if set, every option is refused with this reason

	noZeroes     bool   // the client set NBD_FLAG_C_NO_ZEROES
	structured   bool   // NBD_OPT_STRUCTURED_REPLY was acknowledged
	metaSelected bool   // the last SET_META_CONTEXT selected base:allocation
	metaExport   string // for this export

	data []byte // option data, at most cfg.maxOptionBytes
	out  []byte // scratch for encoding replies
}

// negotiate runs the handshake. It returns the session to serve, or
// errAborted if the client sent NBD_OPT_ABORT, or another error if the
// connection must be dropped. ctx bounds the calls to exports. A non-empty
// refuse answers every option but ABORT with NBD_REP_ERR_POLICY and that
// reason, so no session ever starts.
func negotiate(ctx context.Context, r *bufio.Reader, w *bufio.Writer, exports Exports, cfg config, log *slog.Logger, refuse string) (*session, error) {
	n := &negotiation{exports: exports, cfg: cfg, r: r, w: w, log: log, refuse: refuse}
	return n.run(ctx)
}

func (n *negotiation) run(ctx context.Context) (*session, error) {
	if _, err := n.w.Write(appendGreeting(n.out[:0])); err != nil {
		return nil, fmt.Errorf("nbd: send greeting: %w", err)
	}
	if err := n.w.Flush(); err != nil {
		return nil, fmt.Errorf("nbd: send greeting: %w", err)
	}
	var cf [clientFlagsLen]byte
	if _, err := io.ReadFull(n.r, cf[:]); err != nil {
		return nil, fmt.Errorf("nbd: read client flags: %w", err)
	}
	flags, err := parseClientFlags(cf[:])
	if err != nil {
		return nil, err
	}
	// A client without C_FIXED_NEWSTYLE gets fixed newstyle anyway, as the
	// spec allows: it can only send EXPORT_NAME, which is the same in both.
	n.noZeroes = flags&clientFlagNoZeroes != 0

	for i := 0; ; i++ {
		if i >= n.cfg.maxOptions {
			return nil, fmt.Errorf("nbd: more than %d options", n.cfg.maxOptions)
		}
		var hb [optionHeaderLen]byte
		if _, err := io.ReadFull(n.r, hb[:]); err != nil {
			return nil, fmt.Errorf("nbd: read option header: %w", err)
		}
		h, err := parseOptionHeader(hb[:])
		if err != nil {
			return nil, err
		}
		if h.Length > uint32(n.cfg.maxOptionBytes) {
			// EXPORT_NAME cannot be answered with an error.
			if h.Option == optExportName || h.Length > maxDiscardOptionBytes {
				return nil, fmt.Errorf("nbd: option %d with %d bytes of data", h.Option, h.Length)
			}
			if _, err := n.r.Discard(int(h.Length)); err != nil {
				return nil, fmt.Errorf("nbd: skip option data: %w", err)
			}
			n.replyError(h.Option, repErrTooBig, fmt.Sprintf("option data of %d bytes exceeds the limit of %d", h.Length, n.cfg.maxOptionBytes))
		} else {
			data, err := n.readData(int(h.Length))
			if err != nil {
				return nil, err
			}
			sess, herr := n.handle(ctx, h.Option, data)
			if err := n.w.Flush(); err != nil && !errors.Is(herr, errAborted) {
				if sess != nil {
					closeBackend(sess.backend, n.log)
				}
				return nil, fmt.Errorf("nbd: send option reply: %w", err)
			}
			if herr != nil || sess != nil {
				return sess, herr
			}
			continue
		}
		if err := n.w.Flush(); err != nil {
			return nil, fmt.Errorf("nbd: send option reply: %w", err)
		}
	}
}

// readData reads an option's data; length has been checked against the
// limit.
func (n *negotiation) readData(length int) ([]byte, error) {
	if cap(n.data) < length {
		n.data = make([]byte, length)
	}
	d := n.data[:length]
	if _, err := io.ReadFull(n.r, d); err != nil {
		return nil, fmt.Errorf("nbd: read option data: %w", err)
	}
	return d, nil
}

// handle answers one option. It returns a session when transmission
// starts, errAborted on ABORT, or an error that drops the connection.
// Write errors are left in the bufio.Writer and surface at the flush.
func (n *negotiation) handle(ctx context.Context, opt uint32, data []byte) (*session, error) {
	if n.refuse != "" && opt != optAbort {
		if opt == optExportName {
			return nil, fmt.Errorf("nbd: EXPORT_NAME refused: %s", n.refuse)
		}
		n.replyError(opt, repErrPolicy, n.refuse)
		return nil, nil
	}
	switch opt {
	case optExportName:
		return n.exportName(ctx, data)
	case optAbort:
		// Data SHOULD be ignored. The client may close without reading the
		// ACK: a failure to send it does not matter.
		n.reply(opt, repAck, nil)
		_ = n.w.Flush()
		return nil, errAborted
	case optList:
		n.list(ctx, data)
	case optStartTLS:
		if len(data) != 0 {
			n.replyError(opt, repErrInvalid, "STARTTLS carries no data")
		} else {
			n.replyError(opt, repErrPolicy, "this server does not offer TLS")
		}
	case optInfo, optGo:
		return n.exportInfo(ctx, opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			n.replyError(opt, repErrInvalid, "STRUCTURED_REPLY carries no data")
		} else {
			n.structured = true
			n.reply(opt, repAck, nil)
		}
	case optListMetaContext, optSetMetaContext:
		n.metaContext(opt, data)
	default:
		n.replyError(opt, repErrUnsup, fmt.Sprintf("option %d is not supported", opt))
	}
	return nil, nil
}

func (n *negotiation) reply(opt, typ uint32, data []byte) {
	n.out = appendOptionReply(n.out[:0], opt, typ, data)
	_, _ = n.w.Write(n.out)
}

func (n *negotiation) replyError(opt, typ uint32, msg string) {
	n.out = appendOptionError(n.out[:0], opt, typ, msg)
	_, _ = n.w.Write(n.out)
}

// open opens an export. On failure it returns the option error to answer
// with and its message.
func (n *negotiation) open(ctx context.Context, name string) (Backend, uint32, string) {
	b, err := n.exports.Open(ctx, name)
	if err == nil && b == nil {
		err = errors.New("no backend")
	}
	switch {
	case err == nil:
		return b, 0, ""
	case errors.Is(err, ErrUnknownExport):
		return nil, repErrUnknown, fmt.Sprintf("unknown export %q", name)
	case errors.Is(err, ErrExportRefused):
		n.log.Info("NBD export refused", "export", name, "err", err)
		return nil, repErrPolicy, fmt.Sprintf("export %q refused: %v", name, err)
	case ctx.Err() != nil:
		n.log.Warn("NBD export not opened: handshake ending", "export", name, "err", err)
		return nil, repErrShutdown, fmt.Sprintf("export %q: %v", name, err)
	default:
		n.log.Warn("NBD export not available", "export", name, "err", err)
		return nil, repErrUnknown, fmt.Sprintf("export %q is not available: %v", name, err)
	}
}

// exportName answers NBD_OPT_EXPORT_NAME. It has no error reply: any
// failure drops the connection.
func (n *negotiation) exportName(ctx context.Context, data []byte) (*session, error) {
	if len(data) > maxStringLen {
		return nil, fmt.Errorf("nbd: EXPORT_NAME of %d bytes", len(data))
	}
	name := string(data)
	b, _, msg := n.open(ctx, name)
	if b == nil {
		return nil, fmt.Errorf("nbd: EXPORT_NAME: %s", msg)
	}
	st := n.state(name, b)
	n.out = appendExportNameReply(n.out[:0], st.Size, transmissionFlags(st.Structured), n.noZeroes)
	_, _ = n.w.Write(n.out)
	return &session{name: name, backend: b, state: st}, nil
}

func (n *negotiation) state(name string, b Backend) exportState {
	return exportState{
		Size:        b.Size(),
		Structured:  n.structured,
		MetaContext: n.structured && n.metaSelected && n.metaExport == name,
	}
}

// exportInfo answers NBD_OPT_INFO and NBD_OPT_GO: INFO_EXPORT and
// INFO_BLOCK_SIZE always, INFO_NAME and INFO_DESCRIPTION if asked (the
// latter if the backend has one), then ACK. GO then starts transmission.
func (n *negotiation) exportInfo(ctx context.Context, opt uint32, data []byte) (*session, error) {
	req, err := parseExportRequest(data)
	if err != nil {
		n.replyError(opt, repErrInvalid, fmt.Sprintf("malformed option data: %v", err))
		return nil, nil
	}
	b, typ, msg := n.open(ctx, req.Name)
	if b == nil {
		n.replyError(opt, typ, msg)
		return nil, nil
	}
	st := n.state(req.Name, b)
	var info [32]byte
	n.reply(opt, repInfo, appendInfoExport(info[:0], st.Size, transmissionFlags(st.Structured)))
	n.reply(opt, repInfo, appendInfoBlockSize(info[:0], MinBlockSize, PreferredBlockSize, MaxBlockSize))
	var sentName, sentDescr bool
	for _, it := range req.Infos {
		switch {
		case it == infoName && !sentName:
			sentName = true
			n.reply(opt, repInfo, appendInfoString(nil, infoName, req.Name))
		case it == infoDescription && !sentDescr:
			sentDescr = true
			if d, ok := b.(interface{ Description() string }); ok {
				if s := clipMessage(d.Description()); s != "" {
					n.reply(opt, repInfo, appendInfoString(nil, infoDescription, s))
				}
			}
		}
	}
	n.reply(opt, repAck, nil)
	if opt == optInfo {
		closeBackend(b, n.log)
		return nil, nil
	}
	return &session{name: req.Name, backend: b, state: st}, nil
}

// list answers NBD_OPT_LIST: one REP_SERVER per export, then ACK.
func (n *negotiation) list(ctx context.Context, data []byte) {
	if len(data) != 0 {
		n.replyError(optList, repErrInvalid, "LIST carries no data")
		return
	}
	names, err := n.exports.List(ctx)
	if err != nil {
		n.log.Warn("NBD export list not available", "err", err)
		typ := uint32(repErrUnknown)
		if ctx.Err() != nil {
			typ = repErrShutdown
		}
		n.replyError(optList, typ, fmt.Sprintf("cannot list exports: %v", err))
		return
	}
	var scratch []byte
	for _, name := range names {
		if len(name) > maxStringLen {
			continue // no client could open it
		}
		scratch = appendServerData(scratch[:0], name)
		n.reply(optList, repServer, scratch)
	}
	n.reply(optList, repAck, nil)
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. The only context is base:allocation.
func (n *negotiation) metaContext(opt uint32, data []byte) {
	set := opt == optSetMetaContext
	if set {
		// SET replaces the selection, even when it fails.
		n.metaSelected, n.metaExport = false, ""
	}
	if !n.structured {
		n.replyError(opt, repErrInvalid, "structured replies must be negotiated first")
		return
	}
	req, err := parseMetaContextRequest(data)
	if err != nil {
		n.replyError(opt, repErrInvalid, fmt.Sprintf("malformed option data: %v", err))
		return
	}
	var id uint32 // reserved (0) in LIST replies
	if set {
		id = baseAllocationID
	}
	var buf [4 + len(baseAllocationContext)]byte
	for _, name := range matchMetaContexts(req.Queries, !set) {
		n.reply(opt, repMetaContext, appendMetaContextData(buf[:0], id, name))
		if set {
			n.metaSelected, n.metaExport = true, req.Export
		}
	}
	n.reply(opt, repAck, nil)
}

func closeBackend(b Backend, log *slog.Logger) {
	if err := b.Close(); err != nil {
		log.Warn("NBD backend close failed", "err", err)
	}
}
