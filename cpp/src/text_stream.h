// Incremental detokenization: token pieces (raw bytes) in, valid UTF-8 text out, with stop
// strings. Pure logic: no llama.cpp.
//
// Text is released for streaming only when it is complete UTF-8 and cannot be the start of a
// stop string; when a stop string appears, the output ends just before it.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace heterospec {

// Replaces invalid UTF-8 sequences with U+FFFD so that the text is always valid.
std::string sanitize_utf8(std::string_view bytes);

// Length of the longest prefix of `bytes` that does not end inside an incomplete (but so far
// valid) multi-byte sequence.
size_t complete_utf8_prefix(std::string_view bytes);

class TextStream {
public:
    explicit TextStream(std::vector<std::string> stop = {});

    // Appends one token's bytes. Returns true when a stop string has appeared (the output is
    // then final and later pushes are ignored).
    bool push(std::string_view piece);

    // Text that became final since the last call.
    std::string take_ready();

    // Ends the stream: everything not yet taken (an incomplete UTF-8 tail becomes U+FFFD).
    std::string finish();

    bool stopped() const { return stop_at_ != std::string::npos; }
    // The whole output so far, cut before the stop string if one appeared.
    std::string text() const;

private:
    size_t ready_end() const;

    std::vector<std::string> stop_;
    size_t max_stop_ = 0;
    std::string bytes_;
    size_t taken_ = 0;                   // bytes already released
    size_t stop_at_ = std::string::npos; // where the output ends, once a stop string appeared
};

}  // namespace heterospec
