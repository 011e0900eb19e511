#include "port_client.hpp"

#include <cerrno>
#include <chrono>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <poll.h>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

namespace gdr2v {

namespace {

constexpr size_t kMaxLine = 1 << 16;  // a longer "line" is garbage, not a protocol answer

std::vector<std::string> split_words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

std::string printable(const std::string& s) {
  std::string out;
  for (char ch : s.substr(0, 200)) out += (ch >= 32 && ch < 127) ? ch : '?';
  if (s.size() > 200) out += "...";
  return out;
}

}  // namespace

Capabilities parse_handshake(const std::string& line) {
  const auto words = split_words(line);
  if (words.size() < 2 || words[0] != "gdr2-port")
    throw target_error("port handshake must start with 'gdr2-port 1', got '" + printable(line) + "'");
  if (words[1] != "1")
    throw target_error("port speaks protocol version '" + words[1] + "', this gdr2-verify speaks version 1");
  Capabilities caps;
  caps.dtypes.clear();
  bool dtypes_given = false;
  for (size_t i = 2; i < words.size(); ++i) {
    const auto eq = words[i].find('=');
    if (eq == std::string::npos) throw target_error("port handshake: '" + words[i] + "' is not key=value");
    const std::string key = words[i].substr(0, eq), value = words[i].substr(eq + 1);
    auto flag = [&]() {
      if (value != "0" && value != "1") throw target_error("port handshake: " + key + " must be 0 or 1, got '" + value + "'");
      return value == "1";
    };
    auto number = [&]() {
      char* end = nullptr;
      const long n = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || n < 1 || n > 65536)
        throw target_error("port handshake: " + key + " must be a positive integer, got '" + value + "'");
      return static_cast<int>(n);
    };
    if (key == "dtypes") {
      dtypes_given = true;
      std::stringstream list(value);
      for (std::string d; std::getline(list, d, ',');) {
        if (d == "f32") caps.dtypes.push_back(DType::f32);
        else if (d == "bf16") caps.dtypes.push_back(DType::bf16);
        else if (d == "f16") caps.dtypes.push_back(DType::f16);
        else throw target_error("port handshake: unknown dtype '" + d + "' (known: f32, bf16, f16)");
      }
    } else if (key == "grad") caps.grad = flag();
    else if (key == "varlen") caps.varlen = flag();
    else if (key == "gva") caps.gva = flag();
    else if (key == "deterministic") caps.deterministic = flag();
    else if (key == "max_dk") caps.max_k = number();
    else if (key == "max_dv") caps.max_v = number();
    else if (key == "state") {
      if (value == "KV") caps.state_vk = false;
      else if (value == "VK") caps.state_vk = true;
      else throw target_error("port handshake: state must be KV or VK, got '" + value + "'");
    }
    // Unknown keys are ignored, so later protocol additions do not break older tools.
  }
  if (!dtypes_given) caps.dtypes = {DType::f32};
  if (caps.dtypes.empty()) throw target_error("port handshake: dtypes is empty");
  return caps;
}

namespace {

// The process groups of running ports, so that an interrupted tool (Ctrl-C, SIGTERM, SIGHUP) takes its ports with
// it: a port runs in its own process group and would otherwise outlive the tool. Async-signal-safe: lock-free
// atomics, kill() and raise() only.
constexpr int kMaxPorts = 16;
std::atomic<pid_t> g_port_groups[kMaxPorts];

void kill_ports_and_reraise(int sig) {
  for (auto& group : g_port_groups) {
    const pid_t pgid = group.load();
    if (pgid > 0) kill(-pgid, SIGKILL);
  }
  std::signal(sig, SIG_DFL);
  raise(sig);
}

void register_port_group(pid_t pgid) {
  static const bool installed = [] {
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, kill_ports_and_reraise);
    return true;
  }();
  (void)installed;
  for (auto& group : g_port_groups) {
    pid_t empty = 0;
    if (group.compare_exchange_strong(empty, pgid)) return;
  }
}

void unregister_port_group(pid_t pgid) {
  for (auto& group : g_port_groups) {
    pid_t expected = pgid;
    if (group.compare_exchange_strong(expected, 0)) return;
  }
}

}  // namespace

PortProcess::PortProcess(std::string command, double timeout_s) : command_(std::move(command)), timeout_s_(timeout_s) {
  std::signal(SIGPIPE, SIG_IGN);  // a dead port must give an error on write, not kill the tool
  std::string tmpl = (std::filesystem::temp_directory_path() / "gdr2-verify-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw target_error(std::string("cannot create a temporary directory: ") + std::strerror(errno));
  dir_ = tmpl;
  stderr_path_ = dir_ + "/port-stderr.txt";
  int in_pipe[2], out_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0 || pipe2(out_pipe, O_CLOEXEC) != 0)
    throw target_error(std::string("pipe failed: ") + std::strerror(errno));
  const int err_fd = open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  pid_ = fork();
  if (pid_ < 0) throw target_error(std::string("fork failed: ") + std::strerror(errno));
  if (pid_ == 0) {
    setpgid(0, 0);  // own process group: a hung port and its children are killed together
    dup2(in_pipe[0], STDIN_FILENO);
    dup2(out_pipe[1], STDOUT_FILENO);
    if (err_fd >= 0) dup2(err_fd, STDERR_FILENO);
    execl("/bin/sh", "sh", "-c", command_.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid_, pid_);
  register_port_group(pid_);
  if (err_fd >= 0) close(err_fd);
  close(in_pipe[0]);
  close(out_pipe[1]);
  to_port_ = in_pipe[1];
  from_port_ = out_pipe[0];
  try {
    handshake_ = read_line("handshake", "its handshake line 'gdr2-port 1 ...'");
    caps_ = parse_handshake(handshake_);
  } catch (const target_error&) {
    stop(true);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    throw;
  }
}

PortProcess::~PortProcess() {
  stop(false);
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

void PortProcess::stop(bool force) {
  if (to_port_ >= 0) { close(to_port_); to_port_ = -1; }  // end of stdin: a well-behaved port exits
  if (pid_ > 0) {
    int status = 0;
    // Give a well-behaved port up to 2 s to exit after end of input, then kill its process group.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(force ? 0 : 2000);
    pid_t r = 0;
    while ((r = waitpid(pid_, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < deadline)
      usleep(10000);
    if (r == 0) {
      kill(-pid_, SIGKILL);
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
    }
    exit_status_ = status;
    unregister_port_group(pid_);
    pid_ = -1;
  }
  if (from_port_ >= 0) { close(from_port_); from_port_ = -1; }
}

std::string PortProcess::stderr_tail() const {
  std::ifstream in(stderr_path_);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (all.size() > 600) all = "..." + all.substr(all.size() - 600);
  while (!all.empty() && (all.back() == '\n' || all.back() == ' ')) all.pop_back();
  return all;
}

void PortProcess::fail(const std::string& label, const std::string& what) {
  const bool was_alive = pid_ > 0;
  stop(true);
  std::ostringstream msg;
  msg << "port '" << command_ << "' on " << label << ": " << what;
  if (was_alive && exit_status_ >= 0) {
    if (WIFEXITED(exit_status_)) msg << " [exit status " << WEXITSTATUS(exit_status_) << "]";
    else if (WIFSIGNALED(exit_status_)) msg << " [killed by signal " << WTERMSIG(exit_status_) << "]";
  }
  const std::string tail = stderr_tail();
  if (!tail.empty()) msg << "; its stderr ends with: " << tail;
  throw target_error(msg.str());
}

std::string PortProcess::read_line(const std::string& label, const char* waiting_for) {
  if (pid_ <= 0) throw target_error("port '" + command_ + "' is not running (it failed earlier); " + label + " not run");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
  for (;;) {
    const auto nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      return line;
    }
    if (buffer_.size() > kMaxLine) fail(label, "answered garbage (a line longer than 64 KiB)");
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      std::ostringstream s;
      s << "no answer within " << timeout_s_ << " s while waiting for " << waiting_for << " (port hangs; killed)";
      fail(label, s.str());
    }
    pollfd p{from_port_, POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(label, std::string("poll failed: ") + std::strerror(errno));
    if (r == 0) continue;
    char chunk[4096];
    const ssize_t n = read(from_port_, chunk, sizeof chunk);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) {
      std::string what = std::string("port closed its stdout (exited or crashed) while gdr2-verify waited for ") + waiting_for;
      if (!buffer_.empty()) what += "; partial output: '" + printable(buffer_) + "'";
      fail(label, what);
    }
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

void PortProcess::run_case(const std::string& in, const std::string& out, const std::string& label) {
  if (pid_ <= 0) throw target_error("port '" + command_ + "' is not running (it failed earlier); " + label + " not run");
  const std::string request = in + " " + out + "\n";
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = write(to_port_, request.data() + sent, request.size() - sent);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(label, std::string("cannot send the case (port's stdin closed: ") + std::strerror(errno) + ")");
    sent += static_cast<size_t>(n);
  }
  const std::string answer = read_line(label, "'ok' or 'error <message>'");
  if (answer == "ok") return;
  if (answer.rfind("error", 0) == 0) {
    std::string message = answer.size() > 5 ? answer.substr(6) : "(no message)";
    throw target_error("port '" + command_ + "' reported an error on " + label + ": " + printable(message));
  }
  fail(label, "answered garbage '" + printable(answer) + "' (expected 'ok' or 'error <message>')");
}

}  // namespace gdr2v
