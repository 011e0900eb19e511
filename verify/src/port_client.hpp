#pragma once
// The tool's side of the external port protocol (docs/ports.md): start the port once through /bin/sh -c,
// read its handshake, then one line per case over stdin/stdout. Every wait is bounded (poll with a
// deadline); a port that hangs is killed (its whole process group), one that dies or answers garbage is
// reported with its exit status and the tail of its stderr. Never hangs, never throws anything but
// target_error.
#include <string>
#include <sys/types.h>
#include "target.hpp"

namespace gdr2v {

// Parses "gdr2-port 1 key=value ..." (throws target_error naming what is wrong).
Capabilities parse_handshake(const std::string& line);

class PortProcess {
 public:
  PortProcess(std::string command, double timeout_s);
  ~PortProcess();
  PortProcess(const PortProcess&) = delete;
  PortProcess& operator=(const PortProcess&) = delete;

  const Capabilities& capabilities() const { return caps_; }
  const std::string& handshake() const { return handshake_; }
  const std::string& work_dir() const { return dir_; }
  bool alive() const { return pid_ > 0; }

  // Sends "<in> <out>", waits for "ok" / "error <message>". Throws target_error naming `label`.
  void run_case(const std::string& in, const std::string& out, const std::string& label);

 private:
  std::string read_line(const std::string& label, const char* waiting_for);
  [[noreturn]] void fail(const std::string& label, const std::string& what);
  std::string stderr_tail() const;
  void stop(bool force);

  std::string command_;
  double timeout_s_;
  pid_t pid_ = -1;
  int to_port_ = -1, from_port_ = -1;
  std::string buffer_, dir_, stderr_path_, handshake_;
  Capabilities caps_;
  int exit_status_ = -1;
};

}  // namespace gdr2v
