// mambacv serve over real sockets on 127.0.0.1: the Open Inference Protocol endpoints, JSON and binary infer
// against Model::classify, encoded images against `mambacv classify`, dynamic batching, hostile requests, queue
// overflow and graceful shutdown. Each test starts the built `mambacv serve` as a child process on a free port.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>

#include "mambacv/mambacv.h"
#include "test_util.h"

namespace mambacv {
namespace {

using json = nlohmann::json;
using test::fixture;

// A `mambacv serve` child process; the constructor returns once it listens and every model is ready.
class ServerProcess {
 public:
  explicit ServerProcess(const std::vector<std::string>& args) {
    signal(SIGPIPE, SIG_IGN);  // a server that closes early is an error to check, not a reason to die
    int out[2];
    EXPECT_EQ(pipe(out), 0);
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives the test
      dup2(out[1], 1);
      close(out[0]);
      std::vector<std::string> argv = {test::cli_path(), "serve", "--port", "0"};
      argv.insert(argv.end(), args.begin(), args.end());
      std::vector<char*> cargv;
      for (auto& a : argv) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      execv(cargv[0], cargv.data());
      _exit(127);
    }
    close(out[1]);
    out_ = out[0];
    // the first stdout line names the address
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (line.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, 200) > 0) {
        char c[256];
        const ssize_t n = read(out_, c, sizeof c);
        if (n <= 0) break;
        line.append(c, static_cast<size_t>(n));
      }
    }
    std::smatch m;
    if (!std::regex_search(line, m, std::regex(R"(listening on http://127\.0\.0\.1:(\d+))"))) {
      ADD_FAILURE() << "serve did not start: '" << line << "'";
      return;
    }
    port_ = std::stoi(m[1]);
    while (std::chrono::steady_clock::now() < deadline) {
      auto r = client().Get("/v2/health/ready");
      if (r && r->status == 200) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "serve never became ready";
  }
  ~ServerProcess() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) close(out_);
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(120, 0);
    c.set_write_timeout(120, 0);
    return c;
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  // Waits for the process to end (up to `seconds`) and returns its exit status, or -1.
  int wait_exit(int seconds) {
    for (int i = 0; i < seconds * 20; ++i) {
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        reaped_ = true;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  int port_ = 0;
  bool reaped_ = false;
};

std::vector<std::string> vim_mini_args() {
  return {"--model", fixture("vim_mini.json"), "--weights", fixture("vim_mini.weights.safetensors"), "--threads", "1"};
}

// {"inputs": [FP32 tensor x as JSON numbers]} with optional extra top-level fields.
std::string json_request(const Tensor& x, const json& extra = json::object()) {
  json in = {{"name", "input"}, {"datatype", "FP32"}, {"shape", json::array()}};
  for (int64_t d : x.shape()) in["shape"].push_back(d);
  in["data"] = std::vector<float>(x.f32(), x.f32() + x.numel());
  json j = extra;
  j["inputs"] = json::array({in});
  return j.dump();
}

// The binary tensor data extension: the JSON header, then x's bytes; outputs asked for in binary.
std::string binary_request(const Tensor& x, size_t* header_len, const std::vector<std::string>& outputs = {"logits"}) {
  json in = {{"name", "input"}, {"datatype", "FP32"}, {"shape", json::array()},
             {"parameters", {{"binary_data_size", x.nbytes()}}}};
  for (int64_t d : x.shape()) in["shape"].push_back(d);
  json j = {{"inputs", json::array({in})}, {"outputs", json::array()}};
  for (const auto& o : outputs) j["outputs"].push_back({{"name", o}, {"parameters", {{"binary_data", true}}}});
  std::string body = j.dump();
  *header_len = body.size();
  body.append(static_cast<const char*>(x.raw()), x.nbytes());
  return body;
}

httplib::Headers binary_headers(size_t header_len) {
  return {{"Inference-Header-Content-Length", std::to_string(header_len)}};
}

// The f32 data of output `name` from a binary response.
std::vector<float> binary_output(const httplib::Result& r, const std::string& name) {
  const size_t hl = std::stoul(r->get_header_value("Inference-Header-Content-Length"));
  json j = json::parse(r->body.substr(0, hl));
  size_t offset = hl;
  for (const json& o : j["outputs"]) {
    const size_t n = o["parameters"]["binary_data_size"].get<size_t>();
    if (o["name"] == name) {
      std::vector<float> v(n / 4);
      std::memcpy(v.data(), r->body.data() + offset, n);
      return v;
    }
    offset += n;
  }
  ADD_FAILURE() << "no output " << name;
  return {};
}

std::vector<float> json_output(const std::string& body, const std::string& name) {
  json j = json::parse(body);
  for (const json& o : j["outputs"])
    if (o["name"] == name) {
      std::vector<float> v;
      for (const json& e : o["data"]) v.push_back(static_cast<float>(e.get<double>()));
      return v;
    }
  ADD_FAILURE() << "no output " << name << " in " << body.substr(0, 300);
  return {};
}

std::vector<float> as_vector(const Tensor& t) { return std::vector<float>(t.f32(), t.f32() + t.numel()); }

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string base64(const std::string& s) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < s.size(); i += 3) {
    const uint32_t v = (uint8_t(s[i]) << 16) | (uint8_t(s[i + 1]) << 8) | uint8_t(s[i + 2]);
    for (int k = 3; k >= 0; --k) out += t[(v >> (6 * k)) & 63];
  }
  if (i + 1 == s.size()) {
    const uint32_t v = uint8_t(s[i]) << 16;
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == s.size()) {
    const uint32_t v = (uint8_t(s[i]) << 16) | (uint8_t(s[i + 1]) << 8);
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

// The value of one Prometheus sample line ("name{labels} value"), or -1.
double metric(const std::string& text, const std::string& sample) {
  const size_t p = text.find(sample + " ");
  return p == std::string::npos ? -1 : std::stod(text.substr(p + sample.size() + 1));
}

TEST(Serve, Endpoints) {
  MAMBACV_REQUIRE_FIXTURES();
  std::vector<std::string> args = vim_mini_args();
  args.insert(args.end(), {"--model", fixture("vmamba_v2_mini.json"), "--weights",
                           fixture("vmamba_v2_mini.weights.safetensors"), "--name", "second"});
  ServerProcess srv(args);
  auto c = srv.client();
  auto r = c.Get("/v2/health/live");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = c.Get("/v2/health/ready");
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["ready"], true);
  r = c.Get("/v2");
  ASSERT_EQ(r->status, 200);
  json meta = json::parse(r->body);
  EXPECT_EQ(meta["name"], "mambacv");
  EXPECT_NE(std::find(meta["extensions"].begin(), meta["extensions"].end(), "binary_tensor_data"),
            meta["extensions"].end());
  for (const char* path : {"/v2/models/vim_mini", "/v2/models/vim_mini/versions/1"}) {
    r = c.Get(path);
    ASSERT_EQ(r->status, 200) << path;
    json m = json::parse(r->body);
    EXPECT_EQ(m["name"], "vim_mini");
    EXPECT_EQ(m["inputs"][0]["name"], "input");
    EXPECT_EQ(m["inputs"][0]["shape"], json({-1, 3, 64, 64}));
    EXPECT_EQ(m["outputs"][0]["name"], "logits");
    EXPECT_EQ(m["outputs"][0]["shape"], json({-1, 10}));
  }
  r = c.Get("/v2/models/second");
  ASSERT_EQ(r->status, 200);
  json second = json::parse(r->body);
  EXPECT_EQ(second["platform"], "mambacv_vmamba");
  bool has_stage3 = false;
  for (const json& o : second["outputs"]) has_stage3 = has_stage3 || o["name"] == "stage.3";
  EXPECT_TRUE(has_stage3) << r->body;
  EXPECT_EQ(c.Get("/v2/models/vim_mini/ready")->status, 200);
  EXPECT_EQ(c.Get("/v2/models/second/versions/1/ready")->status, 200);
  r = c.Get("/v2/models/vim_mini/versions/7");
  EXPECT_EQ(r->status, 404);
  EXPECT_NE(json::parse(r->body)["error"].get<std::string>().find("no version '7'"), std::string::npos);
  r = c.Get("/v2/models/nosuch");
  EXPECT_EQ(r->status, 404);
  EXPECT_NE(r->body.find("unknown model 'nosuch'"), std::string::npos);
  EXPECT_NE(r->body.find("vim_mini, second"), std::string::npos);
  r = c.Post("/v2/models/nosuch/infer", "{}", "application/json");
  EXPECT_EQ(r->status, 404);
  r = c.Get("/v2/nothing/here");
  EXPECT_EQ(r->status, 404);
  EXPECT_TRUE(json::parse(r->body).contains("error"));
  // the second model infers too
  Tensor x = test::random_tensor({1, 3, 64, 64}, 5);
  r = c.Post("/v2/models/second/versions/1/infer", json_request(x), "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  Model vm = Model::load(fixture("vmamba_v2_mini.json"), fixture("vmamba_v2_mini.weights.safetensors"));
  EXPECT_EQ(json_output(r->body, "logits"), as_vector(vm.classify(x)));
  r = c.Get("/metrics");
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(metric(r->body, "mambacv_requests_total{model=\"second\",outcome=\"success\"}"), 1);
  EXPECT_GE(metric(r->body, "mambacv_http_responses_total{code=\"404\"}"), 4);
  EXPECT_EQ(metric(r->body, "mambacv_queue_depth{model=\"vim_mini\"}"), 0);
}

TEST(Serve, JsonAndBinaryInferMatchClassifyBitForBit) {
  MAMBACV_REQUIRE_FIXTURES();
  ServerProcess srv(vim_mini_args());
  Model model = Model::load(fixture("vim_mini.json"), fixture("vim_mini.weights.safetensors"), Options{});
  Tensor x = test::random_tensor({2, 3, 64, 64}, 11);
  const std::vector<float> expected = as_vector(model.classify(x));
  auto c = srv.client();
  auto r = c.Post("/v2/models/vim_mini/infer", json_request(x, {{"id", "req-7"}}), "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  EXPECT_EQ(j["id"], "req-7");
  EXPECT_EQ(j["model_name"], "vim_mini");
  EXPECT_EQ(j["outputs"][0]["shape"], json({2, 10}));
  EXPECT_EQ(json_output(r->body, "logits"), expected);

  size_t hl = 0;
  std::string body = binary_request(x, &hl, {"logits", "cls"});
  r = c.Post("/v2/models/vim_mini/infer", binary_headers(hl), body, "application/octet-stream");
  ASSERT_EQ(r->status, 200) << r->body.substr(0, 300);
  EXPECT_EQ(binary_output(r, "logits"), expected);
  EXPECT_EQ(binary_output(r, "cls"), as_vector(model.features(x).at("cls")));
  // binary in, JSON out (a feature map, the shape of the model's)
  json head = {{"inputs", json::array({json{{"name", "input"}, {"datatype", "FP32"}, {"shape", {2, 3, 64, 64}},
                                        {"parameters", {{"binary_data_size", x.nbytes()}}}}})},
               {"outputs", json::array({json{{"name", "tokens"}}})}};
  body = head.dump();
  hl = body.size();
  body.append(static_cast<const char*>(x.raw()), x.nbytes());
  r = c.Post("/v2/models/vim_mini/infer", binary_headers(hl), body, "application/octet-stream");
  ASSERT_EQ(r->status, 200) << r->body.substr(0, 300);
  const Tensor tokens = model.features(x).at("tokens");
  EXPECT_EQ(json::parse(r->body)["outputs"][0]["shape"], json({2, 64, 4, 4}));
  EXPECT_EQ(json_output(r->body, "tokens"), as_vector(tokens));
  // FP16 is refused by an f32 model, with the types it takes
  head["inputs"][0]["datatype"] = "FP16";
  head["inputs"][0]["parameters"]["binary_data_size"] = x.nbytes() / 2;
  body = head.dump();
  hl = body.size();
  body.append(x.nbytes() / 2, '\0');
  r = c.Post("/v2/models/vim_mini/infer", binary_headers(hl), body, "application/octet-stream");
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("send FP32"), std::string::npos) << r->body;
}

TEST(Serve, EncodedImagesGiveTheTopKOfClassify) {
  MAMBACV_REQUIRE_FIXTURES();
  ServerProcess srv(vim_mini_args());
  const std::string a = fixture("images/chelsea.png"), b = fixture("images/coffee.png");
  std::string out;
  ASSERT_EQ(test::run_command(test::q(test::cli_path()) + " classify --json --topk 3 --model " +
                                  test::q(fixture("vim_mini.json")) + " " + test::q(a) + " " + test::q(b),
                              &out),
            0)
      << out;
  std::vector<json> cli = test::json_lines(out);
  ASSERT_EQ(cli.size(), 2u);
  auto expect_top = [&](const json& strings, size_t row, const json& top) {
    for (size_t k = 0; k < 3; ++k) {
      const std::string s = strings[row * 3 + k];  // "score:index" (no labels for this model)
      const size_t colon = s.find(':');
      EXPECT_NEAR(std::stod(s.substr(0, colon)), top[k]["prob"].get<double>(), 2e-6) << s;
      EXPECT_EQ(std::stoi(s.substr(colon + 1)), top[k]["index"].get<int>()) << s;
    }
  };
  auto c = srv.client();
  // JSON: base64 strings; the classification extension as a top-level parameter
  json image = {{"name", "image"}, {"datatype", "BYTES"}, {"shape", json::array({2})},
                {"data", json::array({base64(read_file(a)), json{{"b64", base64(read_file(b))}}})}};
  json j = {{"inputs", json::array({image})}, {"parameters", {{"classification", 3}}}};
  auto r = c.Post("/v2/models/vim_mini/infer", j.dump(), "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  json o = json::parse(r->body)["outputs"][0];
  EXPECT_EQ(o["datatype"], "BYTES");
  EXPECT_EQ(o["shape"], json({2, 3}));
  expect_top(o["data"], 0, cli[0]["top"]);
  expect_top(o["data"], 1, cli[1]["top"]);
  // binary: each element a 4-byte length and the file's bytes; classification as an output parameter
  std::string bin;
  for (const std::string& f : std::vector<std::string>{read_file(b)}) {
    const uint32_t n = static_cast<uint32_t>(f.size());
    bin.append(reinterpret_cast<const char*>(&n), 4);
    bin += f;
  }
  json bin_image = {{"name", "image"}, {"datatype", "BYTES"}, {"shape", json::array({1})},
                    {"parameters", {{"binary_data_size", bin.size()}}}};
  json head = {{"inputs", json::array({bin_image})},
               {"outputs", json::array({json{{"name", "logits"}, {"parameters", {{"classification", 3}}}}})}};
  std::string body = head.dump();
  const size_t hl = body.size();
  body += bin;
  r = c.Post("/v2/models/vim_mini/infer", binary_headers(hl), body, "application/octet-stream");
  ASSERT_EQ(r->status, 200) << r->body;
  expect_top(json::parse(r->body)["outputs"][0]["data"], 0, cli[1]["top"]);
  // an undecodable image is named
  j["inputs"][0]["data"][1] = base64("not an image at all");
  r = c.Post("/v2/models/vim_mini/infer", j.dump(), "application/json");
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("image[1]"), std::string::npos) << r->body;
}

TEST(Serve, DynamicBatchingGivesEachRequestItsOwnRows) {
  MAMBACV_REQUIRE_FIXTURES();
  std::vector<std::string> args = vim_mini_args();
  args.insert(args.end(), {"--max-batch", "6", "--max-delay-ms", "300"});
  ServerProcess srv(args);
  Model model = Model::load(fixture("vim_mini.json"), fixture("vim_mini.weights.safetensors"), Options{});
  constexpr int kClients = 8;
  std::vector<Tensor> inputs;
  for (int i = 0; i < kClients; ++i) inputs.push_back(test::random_tensor({1 + i % 2, 3, 64, 64}, 100 + i));
  std::vector<std::string> bodies(kClients);
  std::vector<int> status(kClients, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i)
    threads.emplace_back([&, i] {
      auto c = srv.client();
      auto r = c.Post("/v2/models/vim_mini/infer", json_request(inputs[i], {{"id", std::to_string(i)}}),
                      "application/json");
      if (r) {
        status[i] = r->status;
        bodies[i] = r->body;
      }
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    ASSERT_EQ(status[i], 200) << bodies[i];
    EXPECT_EQ(json::parse(bodies[i])["id"], std::to_string(i));
    const std::vector<float> got = json_output(bodies[i], "logits");
    const std::vector<float> want = as_vector(model.classify(inputs[i]));
    ASSERT_EQ(got.size(), want.size()) << "request " << i;
    for (size_t k = 0; k < want.size(); ++k) EXPECT_NEAR(got[k], want[k], 1e-4f) << "request " << i;
  }
  const std::string m = srv.client().Get("/metrics")->body;
  const double batches = metric(m, "mambacv_batch_size_count{model=\"vim_mini\"}");
  const double rows = metric(m, "mambacv_batch_size_sum{model=\"vim_mini\"}");
  EXPECT_EQ(rows, 12);                  // 8 requests of 1 or 2 images
  EXPECT_LT(batches, kClients) << m;    // some forward passes served several requests
  EXPECT_LT(metric(m, "mambacv_batch_size_bucket{model=\"vim_mini\",le=\"1\"}"), batches);
}

TEST(Serve, AFailingRequestDoesNotFailItsBatch) {
  MAMBACV_REQUIRE_FIXTURES();
  std::vector<std::string> args = vim_mini_args();
  args.insert(args.end(), {"--max-batch", "8", "--max-delay-ms", "400"});
  ServerProcess srv(args);
  Model model = Model::load(fixture("vim_mini.json"), fixture("vim_mini.weights.safetensors"), Options{});
  std::vector<Tensor> inputs;
  for (int i = 0; i < 4; ++i) inputs.push_back(test::random_tensor({1, 3, 64, 64}, 300 + i));
  inputs[2].fill(3e38f);  // finite input whose forward overflows to non-finite values
  std::vector<int> status(4, 0);
  std::vector<std::string> bodies(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      auto r = srv.client().Post("/v2/models/vim_mini/infer", json_request(inputs[i]), "application/json");
      if (r) {
        status[i] = r->status;
        bodies[i] = r->body;
      }
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) {
    if (i == 2) {
      EXPECT_EQ(status[i], 500) << bodies[i];
      EXPECT_NE(bodies[i].find("non-finite"), std::string::npos) << bodies[i];
    } else {
      ASSERT_EQ(status[i], 200) << bodies[i];
      const std::vector<float> got = json_output(bodies[i], "logits");
      const std::vector<float> want = as_vector(model.classify(inputs[i]));
      for (size_t k = 0; k < want.size(); ++k) EXPECT_NEAR(got[k], want[k], 1e-4f);
    }
  }
  // they shared forward passes (else the test says nothing about batches)
  const std::string m = srv.client().Get("/metrics")->body;
  EXPECT_LT(metric(m, "mambacv_batch_size_count{model=\"vim_mini\"}"), 4) << m;
}

TEST(Serve, HostileRequestsAreRefusedAndTheServerKeepsServing) {
  MAMBACV_REQUIRE_FIXTURES();
  std::vector<std::string> args = vim_mini_args();
  args.insert(args.end(), {"--max-request-mb", "1"});
  ServerProcess srv(args);
  auto c = srv.client();
  const std::string url = "/v2/models/vim_mini/infer";
  struct Case {
    std::string json;
    int status;
    std::string message;
    std::string tail;          // bytes after the JSON: sent with Inference-Header-Content-Length
    bool binary = false;       // send the header even with no tail
    std::string header_len;    // a header value other than the JSON's length
    Case(std::string j, int st, std::string msg, std::string t = "", bool b = false, std::string h = "")
        : json(std::move(j)), status(st), message(std::move(msg)), tail(std::move(t)), binary(b), header_len(std::move(h)) {}
  };
  const std::string x1 = R"({"name":"input","datatype":"FP32","shape":[1,3,64,64])";
  const std::string in1 = R"({"inputs":[{"name":"input","datatype":"FP32","shape":[1],"data":[1]}])";
  const std::vector<Case> cases = {
      {"{not json", 400, "not valid JSON"},
      {"[1,2]", 400, "expected a JSON object"},
      {R"({"inputs":[]})", 400, "inputs: expected a non-empty array"},
      {R"({"inputs":[{"name":"input","datatype":"FP33","shape":[1],"data":[1]}]})", 400, "unknown datatype 'FP33'"},
      {R"({"inputs":[{"name":"input","datatype":"INT32","shape":[1],"data":[1]}]})", 400, "INT32 is not accepted"},
      {R"({"inputs":[)" + x1 + R"(,"data":[1,2,3]}]})", 400, "shape holds 12288 elements but data has 3"},
      {R"({"inputs":[{"name":"input","datatype":"FP32","shape":[100000000000,3,64,64],"data":[1]}]})", 400,
       "more than 2^40 elements"},
      {R"({"inputs":[{"name":"input","datatype":"FP32","shape":[-1,3],"data":[1]}]})", 400, "negative dimension"},
      {R"({"inputs":[{"name":"input","datatype":"FP32","shape":[1],"data":[[[[[[[[[[1]]]]]]]]]]}]})", 400,
       "nested deeper"},
      {R"({"inputs":[{"name":"input","datatype":"FP32","shape":[1,4,2,2],"data":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}]})",
       400, "expected shape (N, 3, H, W)"},
      {R"({"inputs":[{"name":"pixels","datatype":"FP32","shape":[1],"data":[1]}]})", 400, "unknown input 'pixels'"},
      {R"({"inputs":[{"name":"input","datatype":"FP32","shape":[1],"data":["a"]}]})", 400, "expected a number"},
      {R"({"inputs":[{"name":"image","datatype":"BYTES","shape":[1],"data":["***"]}]})", 400, "not base64"},
      {R"({"inputs":[{"name":"image","datatype":"BYTES","shape":[1],"data":["aGVsbG8="]}]})", 400, "image[0]"},
      {R"({"inputs":[{"name":"image","datatype":"BYTES","shape":[9],"data":["aA==","aA==","aA==","aA==","aA==","aA==","aA==","aA==","aA=="]}]})",
       400, "9 images, more than the server's --max-batch 8"},
      {in1 + R"(,"outputs":[{"name":"boxes"}]})", 400, "unknown output 'boxes'"},
      {in1 + R"(,"outputs":[{"name":"cls","parameters":{"classification":2}}]})", 400, "applies to 'logits' only"},
      {R"({"inputs":[)" + x1 + R"(,"parameters":{"binary_data_size":49152}}]})", 400,
       "without the Inference-Header-Content-Length"},
      // the binary extension with sizes that do not add up
      {R"({"inputs":[)" + x1 + R"(,"parameters":{"binary_data_size":49152}}]})", 400, "runs past the end",
       std::string(100, '\0')},
      {R"({"inputs":[)" + x1 + R"(,"parameters":{"binary_data_size":100}}]})", 400,
       "binary_data_size is 100 bytes but shape holds 12288 FP32 elements", std::string(100, '\0')},
      {R"({"inputs":[{"name":"input","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":4}}]})", 400,
       "add up to 4 bytes but 12 follow", std::string(12, '\0')},
      {R"({"inputs":[]})", 400, "999 bytes of JSON declared", "", true, "999"},
      {R"({"inputs":[]})", 400, "Inference-Header-Content-Length: expected a byte count", "", true, "12x"},
      {R"({"inputs":[{"name":"image","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":6}}]})", 400,
       "declares 2147483647 bytes", std::string("\xff\xff\xff\x7f\x00\x00", 6)},
  };
  for (const Case& k : cases) {
    httplib::Headers h;
    const bool binary = k.binary || !k.tail.empty();
    if (binary)
      h = {{"Inference-Header-Content-Length", k.header_len.empty() ? std::to_string(k.json.size()) : k.header_len}};
    auto r = c.Post(url, h, k.json + k.tail, binary ? "application/octet-stream" : "application/json");
    ASSERT_TRUE(r) << k.json;
    EXPECT_EQ(r->status, k.status) << k.json << " -> " << r->body;
    EXPECT_NE(r->body.find(k.message), std::string::npos) << k.json << " -> " << r->body;
    EXPECT_TRUE(json::parse(r->body, nullptr, false).contains("error")) << r->body;
  }
  // NaN cannot be written in JSON; in binary it is refused by name
  Tensor x = test::random_tensor({1, 3, 64, 64}, 3);
  x.f32()[77] = std::nanf("");
  size_t hl = 0;
  std::string body = binary_request(x, &hl);
  auto r = c.Post(url, binary_headers(hl), body, "application/octet-stream");
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("element 77 is not finite"), std::string::npos) << r->body;
  // a body over --max-request-mb: refused from its declared length, before it is read
  // (the server answers and closes without reading the body, so a client still writing may see only the close)
  r = c.Post(url, std::string(2 * 1024 * 1024, ' '), "application/json");
  if (r) {
    EXPECT_EQ(r->status, 413);
    EXPECT_NE(r->body.find("over the limit"), std::string::npos);
  }
  // a huge declared Content-Length (answered from the headers alone: body bytes left unread when the server closes
  // could reset the connection before the answer is read) and a truncated body, on raw sockets
  for (const std::string& raw : {std::string("POST /v2/models/vim_mini/infer HTTP/1.1\r\nHost: x\r\n"
                                             "Content-Length: 99999999999999\r\n\r\n"),
                                 std::string("POST /v2/models/vim_mini/infer HTTP/1.1\r\nHost: x\r\n"
                                             "Content-Length: 5000\r\n\r\n{\"inputs\": [")}) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(srv.port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(write(fd, raw.data(), raw.size()), static_cast<ssize_t>(raw.size()));
    const bool truncated = raw.find("99999") == std::string::npos;
    if (truncated) shutdown(fd, SHUT_WR);  // the rest of the body never comes
    char buf[512] = {0};
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 10000) > 0) (void)!read(fd, buf, sizeof buf - 1);
    if (!truncated) {
      EXPECT_NE(std::string(buf).find(" 413 "), std::string::npos) << "[" << buf << "]";
      // and the connection is closed: the unread body is never taken for a next request
      std::string more;
      for (int i = 0; i < 50; ++i) {
        if (poll(&p, 1, 100) <= 0) continue;
        const ssize_t n = read(fd, buf, sizeof buf - 1);
        if (n <= 0) {
          more += "<closed>";
          break;
        }
        more.append(buf, static_cast<size_t>(n));
      }
      EXPECT_NE(more.find("<closed>"), std::string::npos) << more;
    }
    close(fd);
  }
  // still serving
  r = c.Post(url, json_request(test::random_tensor({1, 3, 64, 64}, 4)), "application/json");
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(c.Get("/v2/health/ready")->status, 200);
}

TEST(Serve, AFullQueueAnswers503AtOnce) {
  MAMBACV_REQUIRE_FIXTURES();
  std::vector<std::string> args = vim_mini_args();
  args.insert(args.end(), {"--max-batch", "48", "--max-delay-ms", "0", "--max-queue", "1"});
  ServerProcess srv(args);
  Tensor x = test::random_tensor({48, 3, 64, 64}, 9);  // a slow request: 48 images per forward
  size_t hl = 0;
  const std::string body = binary_request(x, &hl);
  constexpr int kClients = 10;
  std::vector<int> status(kClients, 0);
  std::vector<double> ms(kClients, 0);
  std::vector<std::string> errors(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i)
    threads.emplace_back([&, i] {
      const auto t0 = std::chrono::steady_clock::now();
      auto r = srv.client().Post("/v2/models/vim_mini/infer", binary_headers(hl), body, "application/octet-stream");
      ms[i] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (r) {
        status[i] = r->status;
        if (r->status != 200) errors[i] = r->body;
      }
    });
  for (auto& t : threads) t.join();
  int ok = 0, full = 0;
  double slowest_ok = 0, slowest_full = 0;
  for (int i = 0; i < kClients; ++i) {
    if (status[i] == 200) {
      ++ok;
      slowest_ok = std::max(slowest_ok, ms[i]);
    } else {
      EXPECT_EQ(status[i], 503) << errors[i];
      EXPECT_NE(errors[i].find("queue of this model is full"), std::string::npos) << errors[i];
      slowest_full = std::max(slowest_full, ms[i]);
      ++full;
    }
  }
  EXPECT_GE(ok, 2);   // the one running and the one waiting
  EXPECT_GE(full, 1);
  EXPECT_LT(slowest_full, slowest_ok);  // refused at once, not after waiting its turn
  const std::string m = srv.client().Get("/metrics")->body;
  EXPECT_EQ(metric(m, "mambacv_requests_total{model=\"vim_mini\",outcome=\"rejected\"}"), full);
}

TEST(Serve, SigtermFinishesTheRequestsInFlight) {
  MAMBACV_REQUIRE_FIXTURES();
  std::vector<std::string> args = vim_mini_args();
  args.insert(args.end(), {"--max-batch", "32", "--max-delay-ms", "0"});
  Tensor x = test::random_tensor({32, 3, 64, 64}, 21);
  size_t hl = 0;
  const std::string body = binary_request(x, &hl);
  constexpr int kClients = 3;
  // The clients race the server: a try where the first request ends before the last arrives shows nothing and is
  // run again with a fresh server, up to kTries times.
  constexpr int kTries = 6;
  bool tested = false;
  for (int attempt = 0; attempt < kTries && !tested; ++attempt) {
    ServerProcess srv(args);
    std::vector<int> status(kClients, 0);
    std::vector<std::thread> threads;
    for (int i = 0; i < kClients; ++i)
      threads.emplace_back([&, i] {
        auto r = srv.client().Post("/v2/models/vim_mini/infer", binary_headers(hl), body, "application/octet-stream");
        status[i] = r ? r->status : -1;
      });
    // SIGTERM once one request runs and the others wait
    bool waiting = false;
    for (int i = 0; i < 2000 && !waiting; ++i) {
      auto r = srv.client().Get("/metrics");
      waiting = r && metric(r->body, "mambacv_queue_depth{model=\"vim_mini\"}") >= kClients - 1;
      if (!waiting) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (!waiting) {
      for (auto& t : threads) t.join();
      continue;
    }
    tested = true;
    ASSERT_EQ(kill(srv.pid(), SIGTERM), 0);
    for (auto& t : threads) t.join();
    for (int i = 0; i < kClients; ++i) EXPECT_EQ(status[i], 200) << "request " << i;
    EXPECT_EQ(srv.wait_exit(30), 0);
    auto r = srv.client().Get("/v2/health/live");
    EXPECT_FALSE(r);  // nothing listens any more
  }
  EXPECT_TRUE(tested) << "in " << kTries << " tries the requests were never in flight together";
}

TEST(Serve, UsageErrors) {
  std::string out;
  EXPECT_EQ(test::run_command(test::q(test::cli_path()) + " serve", &out), 2);
  EXPECT_NE(out.find("--model is required"), std::string::npos) << out;
  EXPECT_EQ(test::run_command(test::q(test::cli_path()) + " serve --weights w.pth --model vim_tiny", &out), 2);
  EXPECT_NE(out.find("--weights must follow the --model"), std::string::npos) << out;
  EXPECT_EQ(test::run_command(test::q(test::cli_path()) + " serve --model vim_tiny --random-weights --model "
                                  "vim_tiny --random-weights", &out), 2);
  EXPECT_NE(out.find("two models are named 'vim_tiny'"), std::string::npos) << out;
  EXPECT_EQ(test::run_command(test::q(test::cli_path()) + " serve --model vim_tiny --random-weights --max-batch 0",
                              &out), 2);
  EXPECT_NE(out.find("--max-batch"), std::string::npos) << out;
  EXPECT_EQ(test::run_command(test::q(test::cli_path()) + " serve --model nosuch_model --random-weights --port 0",
                              &out), 1);
  EXPECT_NE(out.find("nosuch_model"), std::string::npos) << out;
}

}  // namespace
}  // namespace mambacv
