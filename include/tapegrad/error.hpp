#pragma once
/// \file
/// Every exception tapegrad throws derives from tapegrad::Error, so a user can catch one type.
/// Messages name the op (or file) first, then the shapes or bytes involved:
///   "matmul: [32,784] x [256,10]: inner sizes differ (784 vs 256)"

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tapegrad {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
/// Operands whose shapes do not fit the op.
struct ShapeError : Error {
  using Error::Error;
};
/// Misuse of a tape: Vars of two tapes in one op, a stale Var, backward without a seed.
struct TapeError : Error {
  using Error::Error;
};
/// An argument outside its domain (negative probability, label out of range, ...).
struct ValueError : Error {
  using Error::Error;
};
/// A file that cannot be read or written, or whose content is corrupt.
struct IOError : Error {
  using Error::Error;
};
/// A non-finite value where the user asked for an error instead (clipping, optimizer policy).
struct NonFiniteError : Error {
  using Error::Error;
};
/// A tensor larger than the memory the system gives (torch.OutOfMemoryError): the message names
/// its shape and bytes, and the op when a tape was recording one.
struct OutOfMemoryError : Error {
  using Error::Error;
};

namespace detail {
// Builds a message from any streamable pieces: fail<ShapeError>("matmul: ", a, " x ", b).
template <class E, class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  std::ostringstream os;
  (os << ... << std::forward<Parts>(parts));
  throw E(os.str());
}
}  // namespace detail

}  // namespace tapegrad
