// A header-only C++ face of the C API (heterospec.h): RAII handles, std::string and
// std::vector, and failures as hs::Error exceptions. It only calls hs_* functions, so an app
// built with any C++ compiler or standard library links the same libheterospec.
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "heterospec/heterospec.h"

namespace hs {

struct Error : std::runtime_error {
    Error(hs_status s, const char * message) : std::runtime_error(message), status(s) {}
    hs_status status;
};

inline void check(hs_status s) {
    if (s != HS_OK) throw Error(s, hs_last_error());
}

// Called per token with the text that became final with it; return false to stop.
using TokenFn = std::function<bool(int32_t token, const std::string & piece)>;

class Result {
public:
    explicit Result(hs_result * r) : r_(r, hs_result_free) {}
    std::string text() const {
        size_t n = 0;
        const char * s = hs_result_text(r_.get(), &n);
        return std::string(s, n);
    }
    std::vector<int32_t> tokens() const {
        size_t n = 0;
        const int32_t * t = hs_result_tokens(r_.get(), &n);
        return std::vector<int32_t>(t, t + n);
    }
    std::string finish_reason() const { return hs_result_finish_reason(r_.get()); }
    hs_stats stats() const { return hs_result_stats(r_.get()); }

private:
    std::unique_ptr<hs_result, void (*)(hs_result *)> r_;
};

class Engine {
public:
    explicit Engine(const hs_engine_params & params) : e_(nullptr, hs_engine_free) {
        hs_engine * e = nullptr;
        check(hs_engine_create(&params, &e));
        e_.reset(e);
    }
    // The defaults, with this target model.
    explicit Engine(const std::string & target) : Engine(with_target(target)) {}

    std::vector<int32_t> tokenize(const std::string & text, bool add_special = true, bool parse_special = false) {
        std::vector<int32_t> out(text.size() + 8);
        size_t n = 0;
        hs_status s = hs_tokenize(e_.get(), text.data(), int64_t(text.size()), add_special, parse_special,
                                  out.data(), out.size(), &n);
        if (s == HS_ERROR_BUFFER_TOO_SMALL) {
            out.resize(n);
            s = hs_tokenize(e_.get(), text.data(), int64_t(text.size()), add_special, parse_special, out.data(),
                            out.size(), &n);
        }
        check(s);
        out.resize(n);
        return out;
    }

    std::string detokenize(const std::vector<int32_t> & tokens, bool special = false) {
        std::string out(64, '\0');
        size_t n = 0;
        hs_status s = hs_detokenize(e_.get(), tokens.data(), tokens.size(), special, &out[0], out.size(), &n);
        if (s == HS_ERROR_BUFFER_TOO_SMALL) {
            out.resize(n + 1);
            s = hs_detokenize(e_.get(), tokens.data(), tokens.size(), special, &out[0], out.size(), &n);
        }
        check(s);
        out.resize(n);
        return out;
    }

    Result generate(const std::string & prompt, const hs_generate_params & params, const TokenFn & on_token = nullptr) {
        hs_result * r = nullptr;
        check(hs_generate(e_.get(), prompt.c_str(), &params, on_token ? &call : nullptr,
                          on_token ? const_cast<TokenFn *>(&on_token) : nullptr, &r));
        return Result(r);
    }

    void cancel() { hs_cancel(e_.get()); }
    hs_engine * get() const { return e_.get(); }

private:
    static hs_engine_params with_target(const std::string & target) {
        static thread_local std::string path;
        path = target;
        hs_engine_params p = hs_engine_default_params();
        p.target.path = path.c_str();
        return p;
    }
    static bool call(int32_t token, const char * piece, size_t len, void * user) {
        try {
            return (*static_cast<TokenFn *>(user))(token, std::string(piece, len));
        } catch (...) {
            return false;   // an exception must not unwind through the C library
        }
    }
    std::unique_ptr<hs_engine, void (*)(hs_engine *)> e_;
};

}  // namespace hs
