// Error types the bindings map onto Python exceptions:
//   FileNotFound          -> FileNotFoundError
//   std::invalid_argument -> ValueError   (bad options, bad input, unusable models)
//   std::runtime_error    -> RuntimeError (llama.cpp failed at run time)
#pragma once

#include <stdexcept>
#include <string>

namespace heterospec {

struct FileNotFound : std::runtime_error {
    using std::runtime_error::runtime_error;
};

}  // namespace heterospec
