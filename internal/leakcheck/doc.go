// Package leakcheck fails a test binary whose goroutines outlive its
// tests: every test closes what it starts, and a Close must end every
// goroutine it owns. It may import only the standard library.
package leakcheck
