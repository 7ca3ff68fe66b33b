// What a ring does when an exception leaves it mid-exchange.
#pragma once

#include <exception>
#include <initializer_list>
#include <string>
#include <vector>

#include "dhp/communicator.hpp"

namespace dhp {

// Any exception that leaves a ring once messages may be in flight aborts the communicators
// it used: the peers are mid-exchange, and a later call would match their stale messages.
class AbortOnUnwind {
 public:
  AbortOnUnwind(const char* op, std::initializer_list<Communicator*> comms)
      : op_(op), comms_(comms), exceptions_(std::uncaught_exceptions()) {}
  ~AbortOnUnwind() {
    if (std::uncaught_exceptions() <= exceptions_) return;
    for (Communicator* c : comms_)
      if (c != nullptr && !c->aborted())
        c->abort_with_reason(std::string(op_) + " failed mid-exchange");
  }
  AbortOnUnwind(const AbortOnUnwind&) = delete;
  AbortOnUnwind& operator=(const AbortOnUnwind&) = delete;

 private:
  const char* op_;
  std::vector<Communicator*> comms_;
  int exceptions_;
};

}  // namespace dhp
