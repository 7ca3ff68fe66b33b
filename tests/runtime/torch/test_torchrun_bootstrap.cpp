// torchrun bootstrap: forked "ranks" with torchrun's variables rendezvous through the
// c10d TCPStore on 127.0.0.1 and exchange values; a missing rank times out with a
// Communication error; a missing variable is named.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "dhp/error.hpp"
#include "dhp/torch.hpp"

namespace {

using namespace std::chrono_literals;

// A TCP port nobody listens on right now (bound to port 0, then released).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return -1;
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

void set_torchrun_env(int rank, int world_size, int port) {
  setenv("RANK", std::to_string(rank).c_str(), 1);
  setenv("WORLD_SIZE", std::to_string(world_size).c_str(), 1);
  setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
  setenv("LOCAL_WORLD_SIZE", std::to_string(world_size).c_str(), 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
}

// What one forked rank does; its exit code is the number of failed checks (or 100 + n
// for an exception).
int run_rank(int rank, int world_size, int port) {
  try {
    set_torchrun_env(rank, world_size, port);
    dhp::TorchrunBootstrap bootstrap(10s);
    int failures = 0;
    const dhp::ProcessInfo info = bootstrap.process();
    failures += info.world_rank != rank || info.world_size != world_size;
    // Rank 0's value reaches everyone, whatever the others pass.
    const std::vector<std::uint8_t> mine{static_cast<std::uint8_t>(40 + rank), 7, 1};
    const auto got = bootstrap.broadcast("answer", mine);
    failures += got != std::vector<std::uint8_t>{40, 7, 1};
    // Every rank publishes its own key and reads every other rank's.
    bootstrap.store().set("rank/" + std::to_string(rank),
                          std::vector<std::uint8_t>{static_cast<std::uint8_t>(rank * 3)});
    bootstrap.barrier("published");
    for (int r = 0; r < world_size; ++r) {
      const auto value = bootstrap.store().get("rank/" + std::to_string(r));
      failures += value != std::vector<std::uint8_t>{static_cast<std::uint8_t>(r * 3)};
    }
    // Rank 0 serves the store: its destructor waits for the others to leave.
    return failures;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    return 100;
  }
}

// Forks `world_size` ranks and returns their exit codes.
std::vector<int> run_ranks(int world_size) {
  const int port = free_port();
  EXPECT_GT(port, 0);
  std::vector<pid_t> children;
  for (int rank = 0; rank < world_size; ++rank) {
    const pid_t pid = fork();
    if (pid == 0) _exit(run_rank(rank, world_size, port));
    children.push_back(pid);
  }
  std::vector<int> codes;
  for (pid_t pid : children) {
    int status = 0;
    waitpid(pid, &status, 0);
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 200);
  }
  return codes;
}

TEST(TorchrunBootstrap, TwoRanksRendezvousAndExchange) {
  for (int code : run_ranks(2)) EXPECT_EQ(code, 0);
}

TEST(TorchrunBootstrap, ThreeRanksRendezvousAndExchange) {
  for (int code : run_ranks(3)) EXPECT_EQ(code, 0);
}

TEST(TorchrunBootstrap, MissingRankTimesOutWithCommunicationError) {
  const int port = free_port();
  const pid_t pid = fork();
  if (pid == 0) {
    // Rank 0 of 2 alone: the server waits for a worker that never comes.
    set_torchrun_env(0, 2, port);
    try {
      dhp::TorchrunBootstrap bootstrap(1s);
    } catch (const dhp::Error& e) {
      const std::string message = e.what();
      const bool good = e.kind() == dhp::ErrorKind::Communication &&
                        message.find("rendezvous at 127.0.0.1") != std::string::npos;
      if (!good) std::fprintf(stderr, "unexpected error: %s\n", e.what());
      _exit(good ? 0 : 2);
    } catch (...) {
      _exit(3);
    }
    _exit(1);  // no error at all
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(TorchrunBootstrap, MissingVariableIsNamed) {
  set_torchrun_env(0, 1, 29500);
  unsetenv("MASTER_ADDR");
  try {
    dhp::torchrun_env();
    FAIL() << "expected an error for the missing MASTER_ADDR";
  } catch (const dhp::Error& e) {
    EXPECT_EQ(e.kind(), dhp::ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("MASTER_ADDR"), std::string::npos) << e.what();
  }
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("RANK", "3", 1);
  EXPECT_THROW(dhp::torchrun_env(), dhp::Error);  // RANK outside [0, WORLD_SIZE)
}

}  // namespace
