#include "text_stream.h"

#include <algorithm>

namespace heterospec {

namespace {

// Expected length of a UTF-8 sequence from its lead byte, 0 if it cannot start one.
int seq_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

// Whether byte `c` may follow `lead` at position `i` (1-based) of its sequence. The second
// byte has tighter bounds that exclude overlong forms, surrogates and code points > U+10FFFF.
bool continues(unsigned char lead, int i, unsigned char c) {
    if (i == 1) {
        if (lead == 0xE0) return c >= 0xA0 && c <= 0xBF;
        if (lead == 0xED) return c >= 0x80 && c <= 0x9F;
        if (lead == 0xF0) return c >= 0x90 && c <= 0xBF;
        if (lead == 0xF4) return c >= 0x80 && c <= 0x8F;
    }
    return (c & 0xC0) == 0x80;
}

const char kReplacement[] = "\xEF\xBF\xBD";

}  // namespace

std::string sanitize_utf8(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) {
        const unsigned char lead = s[i];
        const int len = seq_len(lead);
        int j = 1;
        while (len > 1 && j < len && i + j < s.size() && continues(lead, j, s[i + j])) ++j;
        if (len > 0 && j == len) {
            out.append(s.substr(i, len));
            i += len;
        } else {
            // replace the maximal invalid subpart with one U+FFFD, resume at the failing byte
            out.append(kReplacement);
            i += std::max(j, 1);
        }
    }
    return out;
}

size_t complete_utf8_prefix(std::string_view s) {
    const size_t n = s.size();
    for (size_t back = 1; back <= 3 && back <= n; ++back) {
        const unsigned char c = s[n - back];
        if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
        const int len = seq_len(c);
        if (len <= int(back)) return n;     // complete, or not a lead byte at all
        for (size_t k = 1; k < back; ++k)
            if (!continues(c, int(k), s[n - back + k])) return n;  // already invalid: release it
        return n - back;                    // a valid sequence still waiting for bytes
    }
    return n;
}

TextStream::TextStream(std::vector<std::string> stop) : stop_(std::move(stop)) {
    stop_.erase(std::remove(stop_.begin(), stop_.end(), std::string()), stop_.end());
    for (const auto & s : stop_) max_stop_ = std::max(max_stop_, s.size());
}

bool TextStream::push(std::string_view piece) {
    if (stopped()) return true;
    const size_t old = bytes_.size();
    bytes_.append(piece);
    for (const auto & s : stop_) {
        // only matches that end in the new bytes are new
        const size_t from = old >= s.size() - 1 ? old - (s.size() - 1) : 0;
        const size_t at = bytes_.find(s, from);
        if (at != std::string::npos) stop_at_ = std::min(stop_at_, at);
    }
    return stopped();
}

size_t TextStream::ready_end() const {
    if (stopped()) return std::max(stop_at_, taken_);
    size_t end = bytes_.size();
    // hold back the longest tail that could still grow into a stop string
    for (size_t h = std::min(max_stop_ - (max_stop_ > 0), end); h > 0; --h) {
        const std::string_view tail(bytes_.data() + end - h, h);
        bool is_prefix = false;
        for (const auto & s : stop_)
            if (s.size() > h && std::string_view(s).substr(0, h) == tail) { is_prefix = true; break; }
        if (is_prefix) { end -= h; break; }
    }
    end = complete_utf8_prefix(std::string_view(bytes_.data(), end));
    return std::max(end, taken_);
}

std::string TextStream::take_ready() {
    const size_t end = ready_end();
    std::string out = sanitize_utf8(std::string_view(bytes_).substr(taken_, end - taken_));
    taken_ = end;
    return out;
}

std::string TextStream::finish() {
    const size_t end = stopped() ? std::max(stop_at_, taken_) : bytes_.size();
    std::string out = sanitize_utf8(std::string_view(bytes_).substr(taken_, end - taken_));
    taken_ = end;
    return out;
}

std::string TextStream::text() const {
    return sanitize_utf8(std::string_view(bytes_).substr(0, stopped() ? stop_at_ : bytes_.size()));
}

}  // namespace heterospec
