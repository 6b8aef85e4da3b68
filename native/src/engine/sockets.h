// Socket options and endings the engine relies on.
#pragma once

#include <cstdint>
#include <string>

namespace kstreams {
namespace engine {

void CloseFd(int& fd);
// Closes so that the peer sees a reset, not an orderly end of stream: SO_LINGER {1, 0}, then close().
// False when the kernel refused the linger option: the close that follows may then send a FIN, and the
// caller counts it (EngineStats.resetFailures) - there is no other way to force a reset.
bool CloseWithReset(int& fd);
void SetNoDelay(int fd);
// Urgent (MSG_OOB) data is delivered inline, as an ordinary byte of the stream: splice() never reads
// out-of-band data, so without this an urgent byte would be held back forever (EPOLLPRI, no progress).
void SetOobInline(int fd);
// splice() stops at TCP's urgent mark (tcp_read_sock never reads past it, and at the mark it reports
// EAGAIN, or end of stream once a FIN follows), so the one urgent byte is moved by hand: when the socket
// is at the mark, it is read (inline, SO_OOBINLINE) and written into the pipe: 1 on success, 0 when not
// at the mark, -1 on error. The only stream byte the engine ever copies, and only for urgent data.
int MoveUrgentByte(int fd, int pipeWr);
// Bytes a TCP socket still holds unsent or unacknowledged (SIOCOUTQ); 0 when it cannot be read.
uint64_t UnsentBytes(int fd);
// The pending error of a socket whose non-blocking connect finished (SO_ERROR).
int ConnectError(int fd);
uint64_t NowMs();
// Moves the calling thread (only it: the process and Node's threads stay) into the network namespace at
// `path`. False with errno set and *syscall naming the call that failed (open or setns).
bool EnterNetns(const std::string& path, const char** syscall);

}  // namespace engine
}  // namespace kstreams
