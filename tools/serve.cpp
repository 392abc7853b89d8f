// mambacv serve: models behind the Open Inference Protocol (KServe v2) over HTTP (cpp-httplib), with dynamic
// batching per model, Prometheus metrics and a graceful SIGTERM.
#include <httplib.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "mambacv/detection.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/serve_protocol.h"

namespace mambacv::cli {

namespace {
using namespace serve;
using ojson = nlohmann::ordered_json;

const char* kServeHelp =
    "usage: mambacv serve --model M (--weights W | --random-weights) [--name N] [--model M2 --weights W2 ...]\n"
    "                     [--host 127.0.0.1] [--port 8000] [--max-batch 8] [--max-delay-ms 5] [--max-queue 32]\n"
    "                     [--max-request-mb 64] [--max-json-mb 16] [--http-threads 64] [--log] [model options]\n"
    "Serves each model under its config's name (or --name, which follows its --model) with the Open Inference\n"
    "Protocol v2 (KServe, Triton, Seldon MLServer):\n"
    "  GET  /v2/health/live, /v2/health/ready (200 once every model is loaded, 400 before and while draining)\n"
    "  GET  /v2 (server metadata), /v2/models/NAME[/versions/1], /v2/models/NAME[/versions/1]/ready\n"
    "  POST /v2/models/NAME[/versions/1]/infer  JSON tensors, or the binary tensor data extension\n"
    "  GET  /metrics (Prometheus text)\n"
    "Inputs (one per request): \"input\" FP32 (N, 3, H, W) preprocessed (FP16 / BF16 when --dtype is f16 / bf16), or\n"
    "\"image\" BYTES (N): encoded PNG / JPEG / ... files (JSON: base64 strings), given the model's eval transform\n"
    "(detectors: the detect pipeline). Outputs: \"logits\" (parameters.classification K gives \"score:index:label\"\n"
    "strings), the feature names of 'mambacv features', \"detections\" (detectors: one JSON text per image).\n"
    "Requests for a model are batched up to --max-batch images or --max-delay-ms; more than --max-queue waiting\n"
    "requests answer 503, bodies over --max-request-mb (JSON over --max-json-mb) 413; a request holds at most\n"
    "--max-batch images. SIGTERM / SIGINT: stop accepting, finish the requests\n"
    "in flight, exit 0. --port 0 picks a free port; the address is printed on stdout once listening.\n";

int g_signal_pipe[2] = {-1, -1};
extern "C" void on_stop_signal(int sig) {
  const unsigned char b = static_cast<unsigned char>(sig);
  (void)!write(g_signal_pipe[1], &b, 1);
}

// The longest a request body may take to arrive (httplib's read timeout restarts with every byte).
constexpr double kMaxBodySeconds = 120;


// ---- metrics -----------------------------------------------------------------------------------------------------
struct Histogram {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // per bound, not cumulative; the last one is +Inf
  double sum = 0;
  uint64_t n = 0;
  explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
  void observe(double v) {
    size_t i = 0;
    while (i < bounds.size() && v > bounds[i]) ++i;
    ++counts[i];
    sum += v;
    ++n;
  }
  void write(std::ostringstream& os, const std::string& name, const std::string& labels) const {
    os.precision(17);
    uint64_t cum = 0;
    for (size_t i = 0; i <= bounds.size(); ++i) {
      cum += counts[i];
      os << name << "_bucket{" << labels << ",le=\"";
      if (i < bounds.size()) os << bounds[i]; else os << "+Inf";
      os << "\"} " << cum << "\n";
    }
    os << name << "_sum{" << labels << "} " << sum << "\n" << name << "_count{" << labels << "} " << n << "\n";
  }
};

struct ModelMetrics {
  std::mutex mu;
  uint64_t success = 0, failure = 0, rejected = 0;  // rejected: 503 for a full queue
  Histogram latency{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
  Histogram batch{{1, 2, 4, 8, 16, 32, 64, 128}};
  Histogram infer_seconds{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
};

// ---- dynamic batching --------------------------------------------------------------------------------------------
struct JobResult {
  std::map<std::string, Tensor> outputs;         // each (rows of this job, ...)
  std::vector<DetectionResult> detections;       // detectors: one per image
  std::string error;                             // set when this job failed
  int status = 200;
  int batch_rows = 0;                            // rows of the forward this job ran in
};

struct Job {
  Tensor input;                // (n, 3, H, W) f32, classifiers and backbones
  std::vector<Image> images;   // detectors
  DetectOptions detect_opt;
  bool logits = false;
  std::set<std::string> features;
  std::promise<JobResult> done;
  int64_t rows() const { return input.defined() ? input.dim(0) : static_cast<int64_t>(images.size()); }
  bool batches_with(const Job& o) const {
    return input.defined() && o.input.defined() && input.dim(2) == o.input.dim(2) && input.dim(3) == o.input.dim(3);
  }
};

class Batcher {
 public:
  Batcher(const Model* model, const Detector* detector, int max_batch, double max_delay_s, int max_queue,
          ModelMetrics* metrics)
      : model_(model), detector_(detector), max_batch_(max_batch), max_delay_s_(max_delay_s),
        max_queue_(max_queue), metrics_(metrics), worker_([this] { loop(); }) {}
  ~Batcher() { stop(); }

  // Queues a job; HttpError 503 at once when --max-queue requests already wait or the server is stopping.
  std::future<JobResult> submit(std::unique_ptr<Job> job) {
    std::future<JobResult> f = job->done.get_future();
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopping_) throw HttpError(503, "the server is shutting down");
      if (static_cast<int>(queue_.size()) >= max_queue_) {
        std::lock_guard<std::mutex> ml(metrics_->mu);
        ++metrics_->rejected;
        throw HttpError(503, "the queue of this model is full (" + std::to_string(max_queue_) +
                                 " requests wait; --max-queue); retry later");
      }
      queue_.push_back({std::move(job), now_s()});
    }
    cv_.notify_all();
    return f;
  }
  int depth() {
    std::lock_guard<std::mutex> lk(mu_);
    return static_cast<int>(queue_.size());
  }
  // Runs what is queued without waiting for batches to fill (draining); new jobs are still taken.
  void flush() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      flushing_ = true;
    }
    cv_.notify_all();
  }
  // Runs what is queued, then ends the worker.
  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

 private:
  struct Pending {
    std::unique_ptr<Job> job;
    double enqueued;
  };

  // The queue positions of the next batch: the front job and every later one that fits its batch (same H x W,
  // up to max_batch_ rows in all), in arrival order; *rows is their row count.
  std::vector<size_t> next_batch(int64_t* rows) const {
    const Job& first = *queue_.front().job;
    std::vector<size_t> members = {0};
    *rows = first.rows();
    for (size_t i = 1; i < queue_.size() && *rows < max_batch_; ++i)
      if (first.batches_with(*queue_[i].job) && *rows + queue_[i].job->rows() <= max_batch_) {
        *rows += queue_[i].job->rows();
        members.push_back(i);
      }
    return members;
  }

  void loop() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      const double deadline = queue_.front().enqueued + max_delay_s_;
      int64_t rows = 0;
      std::vector<size_t> members = next_batch(&rows);
      // detector jobs never batch; the others wait for a full batch until the front job's deadline
      while (!stopping_ && !flushing_ && rows < max_batch_ && now_s() < deadline && queue_.front().job->input.defined()) {
        cv_.wait_for(lk, std::chrono::duration<double>(std::max(0.0, deadline - now_s())));
        members = next_batch(&rows);
      }
      std::vector<std::unique_ptr<Job>> batch;
      for (size_t i : members) batch.push_back(std::move(queue_[i].job));
      for (size_t k = members.size(); k-- > 0;) queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(members[k]));
      lk.unlock();
      run(batch);
      lk.lock();
    }
  }

  void run(std::vector<std::unique_ptr<Job>>& batch) {
    const double t0 = now_s();
    int64_t rows = 0;
    for (auto& j : batch) rows += j->rows();
    std::vector<JobResult> results(batch.size());
    if (detector_) {
      for (size_t i = 0; i < batch.size(); ++i) {
        try {
          for (const Image& im : batch[i]->images) results[i].detections.push_back(detector_->detect(im, batch[i]->detect_opt));
        } catch (const std::exception& e) {
          results[i].error = e.what();
          results[i].status = 400;
        }
      }
    } else {
      try {
        forward(batch, &results);
      } catch (const std::exception& e) {
        if (batch.size() == 1) {
          results[0].error = e.what();
          results[0].status = 400;
        } else {
          // one job's input broke the shared forward: each job alone, so only that one fails
          for (size_t i = 0; i < batch.size(); ++i) {
            std::vector<std::unique_ptr<Job>> one;
            one.push_back(std::move(batch[i]));
            std::vector<JobResult> r(1);
            try {
              forward(one, &r);
            } catch (const std::exception& e2) {
              r[0].error = e2.what();
              r[0].status = 400;
            }
            batch[i] = std::move(one[0]);
            results[i] = std::move(r[0]);
          }
          rows = 0;  // each job ran as its own forward
        }
      }
    }
    {
      std::lock_guard<std::mutex> ml(metrics_->mu);
      if (rows > 0) {
        metrics_->batch.observe(static_cast<double>(rows));
      } else {
        for (auto& j : batch) metrics_->batch.observe(static_cast<double>(j->rows()));
      }
      metrics_->infer_seconds.observe(now_s() - t0);
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      results[i].batch_rows = static_cast<int>(rows > 0 ? rows : batch[i]->rows());
      batch[i]->done.set_value(std::move(results[i]));
    }
  }

  // One forward over the jobs' rows; each result gets its own rows of every output it asked for.
  void forward(std::vector<std::unique_ptr<Job>>& batch, std::vector<JobResult>* results) const {
    Tensor x;
    if (batch.size() == 1) {
      x = batch[0]->input;
    } else {
      std::vector<Tensor> parts;
      for (auto& j : batch) parts.push_back(j->input);
      x = concat_rows(parts);
    }
    bool logits = false;
    bool features = false;
    for (auto& j : batch) {
      logits = logits || j->logits;
      features = features || !j->features.empty();
    }
    std::map<std::string, Tensor> out;
    if (logits) out["logits"] = model_->classify(x);
    if (features)
      for (auto& kv : model_->features(x)) out[kv.first] = kv.second;
    int64_t row = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      const Job& j = *batch[i];
      const int64_t n = j.rows();
      for (const auto& kv : out) {
        if (!(kv.first == "logits" ? j.logits : j.features.count(kv.first) > 0)) continue;
        Tensor mine = kv.second.slice0(row, row + n).clone();
        const float* v = mine.f32();
        for (int64_t e = 0; e < mine.numel(); ++e)
          if (!std::isfinite(v[e])) {
            (*results)[i].error = "the model produced non-finite values (NaN or Inf) in '" + kv.first + "'";
            (*results)[i].status = 500;
            break;
          }
        (*results)[i].outputs[kv.first] = std::move(mine);
      }
      row += n;
    }
  }

  static Tensor concat_rows(const std::vector<Tensor>& parts) {
    Shape shape = parts[0].shape();
    shape[0] = 0;
    for (const Tensor& p : parts) shape[0] += p.dim(0);
    Tensor x = Tensor::empty(shape);
    char* dst = static_cast<char*>(x.raw());
    for (const Tensor& p : parts) {
      std::memcpy(dst, p.raw(), p.nbytes());
      dst += p.nbytes();
    }
    return x;
  }

  const Model* model_;
  const Detector* detector_;
  const int max_batch_;
  const double max_delay_s_;
  const int max_queue_;
  ModelMetrics* metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;
  bool stopping_ = false;
  bool flushing_ = false;
  std::thread worker_;  // last: starts after the members it reads
};

// ---- the models --------------------------------------------------------------------------------------------------
struct ModelArgs {
  std::vector<std::string> argv;  // --model M and the options that followed it
};

struct ServedModel {
  std::string name;
  ModelConfig cfg;
  std::string task;  // classification, features, detection
  std::optional<Model> model;
  std::optional<Detector> detector;
  InputSpec spec;
  std::vector<std::string> labels;
  // What the model offers at its default input (batch dimension -1): name, datatype, shape
  std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>> outputs;
  ModelMetrics metrics;
  std::unique_ptr<Batcher> batcher;
};

// Server-wide state shared by the handlers.
struct Server {
  std::vector<std::unique_ptr<ServedModel>> models;
  std::atomic<bool> loaded{false};
  std::atomic<bool> draining{false};
  std::mutex http_mu;
  std::map<int, uint64_t> http_status;  // responses by status code
  bool log = false;
  DType dtype = DType::F32;

  ServedModel* find(const std::string& name, const std::string& version) {
    for (auto& m : models)
      if (m->name == name) {
        if (!version.empty() && version != "1")
          throw HttpError(404, "model '" + name + "' has no version '" + version + "' (versions: 1)");
        if (!loaded) throw HttpError(503, "model '" + name + "' is still loading");
        return m.get();
      }
    std::string known;
    for (auto& m : models) known += (known.empty() ? "" : ", ") + m->name;
    throw HttpError(404, "unknown model '" + name + "' (served: " + known + ")");
  }
};

const char* wire_datatype(DType t) { return t == DType::F16 ? "FP16" : t == DType::BF16 ? "BF16" : "FP32"; }

ojson model_metadata(const ServedModel& m, DType dtype) {
  ojson j;
  j["name"] = m.name;
  j["versions"] = ojson::array({"1"});
  j["platform"] = "mambacv_" + m.cfg.arch;
  ojson inputs = ojson::array();
  if (!m.detector) {
    ojson in = {{"name", "input"}, {"datatype", "FP32"}, {"shape", {-1, 3, m.spec.size, m.spec.size}}};
    if (dtype != DType::F32) in["parameters"] = {{"also_accepts", wire_datatype(dtype)}};
    inputs.push_back(in);
  }
  inputs.push_back({{"name", "image"}, {"datatype", "BYTES"}, {"shape", ojson::array({-1})}});
  j["inputs"] = inputs;
  ojson outputs = ojson::array();
  for (const auto& [name, type, shape] : m.outputs) outputs.push_back({{"name", name}, {"datatype", type}, {"shape", shape}});
  j["outputs"] = outputs;
  ojson p;
  p["task"] = m.task;
  p["config"] = m.cfg.name;
  if (!m.detector) p["input_size"] = m.spec.size;
  p["max_batch_size"] = 0;  // filled by the caller
  j["parameters"] = p;
  return j;
}

void load_model(ServedModel& m, const ModelArgs& ma, const Options& opt, int max_batch, double max_delay_s,
                int max_queue) {
  Args a("serve", ma.argv, {"model", "weights", "name"}, {"random-weights"});
  m.cfg = load_model_config(a.get("model"));
  const std::string weights = weights_for(a, m.cfg);
  if (weights.empty()) warn_random_weights("serve", m.cfg);
  if (m.cfg.arch == "mask_rcnn") {
    m.detector = weights.empty() ? Detector::random(m.cfg.path, opt) : Detector::load(m.cfg.path, weights, opt);
    m.task = "detection";
    m.outputs.push_back({"detections", "BYTES", {-1}});
  } else {
    m.model = weights.empty() ? Model::random(m.cfg, opt, 1) : Model::load(m.cfg.path, weights, opt);
    m.spec = m.model->input_spec();
    m.labels = m.model->class_names();
    m.task = m.model->num_classes() > 0 ? "classification" : "features";
    // one forward at the default size: the output names and shapes for the metadata, and a warm-up
    Tensor probe = Tensor::zeros({1, 3, m.spec.size, m.spec.size});
    if (m.model->num_classes() > 0) m.outputs.push_back({"logits", "FP32", {-1, m.model->num_classes()}});
    for (const auto& kv : m.model->features(probe)) {
      std::vector<int64_t> shape(kv.second.shape().begin(), kv.second.shape().end());
      shape[0] = -1;
      m.outputs.push_back({kv.first, "FP32", shape});
    }
  }
  m.batcher = std::make_unique<Batcher>(m.model ? &*m.model : nullptr, m.detector ? &*m.detector : nullptr,
                                        max_batch, max_delay_s, max_queue, &m.metrics);
}

// The request's tensors as one job for `m`, checked against what the model takes (HttpError 400 otherwise).
// Bounds how many images are decoded at once (each may take up to 400 MB decoded), whatever the HTTP threads.
class DecodeSlots {
 public:
  explicit DecodeSlots(int n) : free_(n) {}
  void acquire() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return free_ > 0; });
    --free_;
  }
  void release() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      ++free_;
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int free_;
};
DecodeSlots& decode_slots() {
  static DecodeSlots slots(static_cast<int>(std::max(2u, std::thread::hardware_concurrency())));
  return slots;
}

// Decoded pixels one detector request may hold (its images wait in the queue decoded; masks come back at their size).
constexpr int64_t kMaxDetectorRequestPixels = int64_t{64} << 20;

std::unique_ptr<Job> make_job(const ServedModel& m, const InferRequest& req, DType dtype, int max_batch,
                              std::vector<RequestedOutput>* outputs) {
  auto job = std::make_unique<Job>();
  if (req.inputs.size() != 1)
    throw HttpError(400, "inputs: model '" + m.name + "' takes one input ('input' or 'image'), got " +
                             std::to_string(req.inputs.size()));
  const InferInput& in = req.inputs[0];
  // outputs: the named ones, or the model's default (logits; every feature of a backbone; detections)
  *outputs = req.outputs;
  if (outputs->empty()) {
    if (m.detector) outputs->push_back({"detections", req.binary_output, 0});
    else if (m.model->num_classes() > 0) outputs->push_back({"logits", req.binary_output, 0});
    else
      for (const auto& o : m.outputs) outputs->push_back({std::get<0>(o), req.binary_output, 0});
  }
  for (RequestedOutput& o : *outputs) {
    bool offered = false;
    for (const auto& mo : m.outputs) offered = offered || std::get<0>(mo) == o.name;
    if (!offered) {
      std::string names;
      for (const auto& mo : m.outputs) names += (names.empty() ? "" : ", ") + std::get<0>(mo);
      throw HttpError(400, "unknown output '" + o.name + "' (model '" + m.name + "' offers: " + names + ")");
    }
    if (o.name == "logits") {
      if (!o.classification) o.classification = req.classification;
      job->logits = true;
    } else if (o.classification) {
      throw HttpError(400, "output '" + o.name + "': the classification extension applies to 'logits' only");
    } else if (o.name != "detections") {
      job->features.insert(o.name);
    }
  }
  if (in.name == "image") {
    if (in.datatype != "BYTES") throw HttpError(400, "input 'image': expected datatype BYTES (encoded image files), got " + in.datatype);
    if (in.bytes.empty()) throw HttpError(400, "input 'image': no images (shape holds 0 elements)");
    if (static_cast<int>(in.bytes.size()) > max_batch)
      throw HttpError(400, "input 'image': " + std::to_string(in.bytes.size()) + " images, more than the server's "
                           "--max-batch " + std::to_string(max_batch) + "; split the request");
    std::vector<Tensor> rows;
    int64_t pixels = 0;
    for (size_t i = 0; i < in.bytes.size(); ++i) {
      const std::string what = "image[" + std::to_string(i) + "]";
      Image im;
      decode_slots().acquire();
      try {
        im = decode_image(in.bytes[i].data(), in.bytes[i].size(), what);
        if (!m.detector) rows.push_back(preprocess(im, m.spec));
      } catch (const std::exception& e) {
        decode_slots().release();
        throw HttpError(400, "input 'image': " + std::string(e.what()));
      }
      decode_slots().release();
      if (m.detector) {
        pixels += static_cast<int64_t>(im.width) * im.height;
        if (pixels > kMaxDetectorRequestPixels)
          throw HttpError(400, "input 'image': the images hold more than " +
                                   std::to_string(kMaxDetectorRequestPixels >> 20) + " Mpixel; send fewer per request");
        job->images.push_back(std::move(im));
      }
    }
    if (!m.detector) job->input = rows.size() == 1 ? rows[0] : stack_batch(rows);
  } else if (in.name == "input") {
    if (m.detector)
      throw HttpError(400, "input 'input': detector '" + m.name + "' takes encoded images as 'image' (BYTES)");
    if (in.datatype != "FP32" && in.datatype != wire_datatype(dtype))
      throw HttpError(400, "input 'input': datatype " + in.datatype + " is not what model '" + m.name +
                               "' computes in; send FP32" + (dtype == DType::F32 ? "" : std::string(" or ") + wire_datatype(dtype)));
    if (in.shape.size() != 4 || in.shape[0] < 1 || in.shape[1] != 3 || in.shape[2] < 1 || in.shape[3] < 1)
      throw HttpError(400, "input 'input': expected shape (N, 3, H, W) with N >= 1, got " + in.tensor.str());
    if (in.shape[0] > max_batch)
      throw HttpError(400, "input 'input': " + std::to_string(in.shape[0]) + " images, more than the server's "
                           "--max-batch " + std::to_string(max_batch) + "; split the request");
    if (in.shape[2] > 4096 || in.shape[3] > 4096)
      throw HttpError(400, "input 'input': H and W up to 4096 are accepted, got " + in.tensor.str());
    job->input = in.tensor;
  } else {
    throw HttpError(400, "unknown input '" + in.name + "': model '" + m.name + "' takes 'input' (FP32 (N, 3, H, W)) or "
                         "'image' (BYTES, encoded image files)");
  }
  if (m.detector) {
    job->detect_opt.score_thr = static_cast<float>(req.score_threshold);
    job->detect_opt.max_per_img = req.max_detections;
    job->detect_opt.masks = req.masks;
  }
  return job;
}

std::vector<OutputTensor> make_outputs(const ServedModel& m, const std::vector<RequestedOutput>& wanted,
                                       JobResult& r) {
  std::vector<OutputTensor> outs;
  for (const RequestedOutput& o : wanted) {
    OutputTensor t;
    t.name = o.name;
    t.binary = o.binary;
    if (o.name == "detections") {
      for (const DetectionResult& d : r.detections)
        t.strings.push_back(json_text(detections_json(d, m.detector->class_names(), true)));
      t.shape = {static_cast<int64_t>(t.strings.size())};
    } else if (o.name == "logits" && o.classification > 0) {
      const Tensor& logits = r.outputs.at("logits");
      const auto top = top_k(logits, std::min<int>(o.classification, static_cast<int>(logits.dim(1))), m.labels);
      char buf[64];
      for (const auto& row : top)
        for (const ClassScore& c : row) {
          std::snprintf(buf, sizeof buf, "%.6f:%d", c.prob, c.index);
          t.strings.push_back(c.label.empty() ? std::string(buf) : std::string(buf) + ":" + c.label);
        }
      t.shape = {static_cast<int64_t>(top.size()), static_cast<int64_t>(top.empty() ? 0 : top[0].size())};
    } else {
      t.tensor = r.outputs.at(o.name);
      t.shape.assign(t.tensor.shape().begin(), t.tensor.shape().end());
    }
    outs.push_back(std::move(t));
  }
  return outs;
}

std::string metrics_text(Server& s) {
  std::ostringstream os;
  os << "# HELP mambacv_requests_total Infer requests by model and outcome.\n# TYPE mambacv_requests_total counter\n";
  for (auto& m : s.models) {
    std::lock_guard<std::mutex> lk(m->metrics.mu);
    os << "mambacv_requests_total{model=\"" << m->name << "\",outcome=\"success\"} " << m->metrics.success << "\n";
    os << "mambacv_requests_total{model=\"" << m->name << "\",outcome=\"failure\"} " << m->metrics.failure << "\n";
    os << "mambacv_requests_total{model=\"" << m->name << "\",outcome=\"rejected\"} " << m->metrics.rejected << "\n";
  }
  os << "# HELP mambacv_request_duration_seconds Infer request latency, parsing to response.\n"
        "# TYPE mambacv_request_duration_seconds histogram\n";
  for (auto& m : s.models) {
    std::lock_guard<std::mutex> lk(m->metrics.mu);
    m->metrics.latency.write(os, "mambacv_request_duration_seconds", "model=\"" + m->name + "\"");
  }
  os << "# HELP mambacv_batch_size Images per forward pass.\n# TYPE mambacv_batch_size histogram\n";
  for (auto& m : s.models) {
    std::lock_guard<std::mutex> lk(m->metrics.mu);
    m->metrics.batch.write(os, "mambacv_batch_size", "model=\"" + m->name + "\"");
  }
  os << "# HELP mambacv_inference_seconds Time of each forward pass.\n# TYPE mambacv_inference_seconds histogram\n";
  for (auto& m : s.models) {
    std::lock_guard<std::mutex> lk(m->metrics.mu);
    m->metrics.infer_seconds.write(os, "mambacv_inference_seconds", "model=\"" + m->name + "\"");
  }
  os << "# HELP mambacv_queue_depth Requests waiting for a forward pass.\n# TYPE mambacv_queue_depth gauge\n";
  for (auto& m : s.models)
    os << "mambacv_queue_depth{model=\"" << m->name << "\"} " << (s.loaded ? m->batcher->depth() : 0) << "\n";
  os << "# HELP mambacv_http_responses_total HTTP responses by status code.\n"
        "# TYPE mambacv_http_responses_total counter\n";
  {
    std::lock_guard<std::mutex> lk(s.http_mu);
    for (const auto& kv : s.http_status) os << "mambacv_http_responses_total{code=\"" << kv.first << "\"} " << kv.second << "\n";
  }
  return os.str();
}

void send_json(httplib::Response& res, int status, const std::string& body) {
  res.status = status;
  res.set_content(body, "application/json");
}

// The socket of a request's connection: the one whose peer is the request's remote address and port; -1 if none.
int connection_socket(const std::string& remote_addr, int remote_port) {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  while (dirent* e = readdir(dir)) {
    const int fd = std::atoi(e->d_name);
    if (fd <= 2 || fd == dirfd(dir)) continue;
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) continue;
    char host[INET6_ADDRSTRLEN] = {0};
    int port = -1;
    if (peer.ss_family == AF_INET) {
      const auto* a = reinterpret_cast<const sockaddr_in*>(&peer);
      inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
      port = ntohs(a->sin_port);
    } else if (peer.ss_family == AF_INET6) {
      const auto* a = reinterpret_cast<const sockaddr_in6*>(&peer);
      inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
      port = ntohs(a->sin6_port);
    }
    if (port == remote_port && remote_addr == host) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  return found;
}

// An answer after which the connection is closed, for a request whose body is left unread (it must not be taken
// for the next request). httplib 0.11 keeps a connection open whatever the handler's "Connection: close", so the
// answer is written by a content provider, which then shuts the socket down: httplib's next read on it ends the
// connection.
void send_json_and_close(const httplib::Request& req, httplib::Response& res, int status, const std::string& body) {
  res.status = status;
  res.set_header("Connection", "close");
  const std::string addr = req.remote_addr;
  const int port = req.remote_port;
  res.set_content_provider(body.size(), "application/json",
                           [body, addr, port](size_t offset, size_t length, httplib::DataSink& sink) {
                             sink.write(body.data() + offset, length);
                             if (offset + length == body.size()) {
                               const int fd = connection_socket(addr, port);
                               if (fd >= 0) shutdown(fd, SHUT_RDWR);
                             }
                             return true;
                           });
}


// Splits the command line: options before the first --model and the server's own go to the server; --weights,
// --name and --random-weights belong to the --model before them.
void split_args(const std::vector<std::string>& argv, std::vector<std::string>* server, std::vector<ModelArgs>* models) {
  static const std::set<std::string> kPerModel = {"weights", "name"};
  for (size_t i = 0; i < argv.size(); ++i) {
    std::string key = argv[i].rfind("--", 0) == 0 ? argv[i].substr(2) : "";
    const size_t eq = key.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) key = key.substr(0, eq);
    const bool per_model = key == "model" || kPerModel.count(key) || key == "random-weights";
    if (!per_model) {
      server->push_back(argv[i]);
      continue;
    }
    if (key == "model") models->emplace_back();
    MAMBACV_USAGE_CHECK(!models->empty(), "--" << key << " must follow the --model it belongs to");
    models->back().argv.push_back(argv[i]);
    if (key != "random-weights" && !inline_value) {
      MAMBACV_USAGE_CHECK(i + 1 < argv.size(), "option --" << key << " needs a value");
      models->back().argv.push_back(argv[++i]);
    }
  }
}

std::string model_name_of(const ModelArgs& ma) {
  Args a("serve", ma.argv, {"model", "weights", "name"}, {"random-weights"});
  if (a.has("name")) return a.get("name");
  std::string n = a.get("model");
  const size_t slash = n.find_last_of('/');
  if (slash != std::string::npos) n = n.substr(slash + 1);
  if (n.size() > 5 && n.compare(n.size() - 5, 5, ".json") == 0) n = n.substr(0, n.size() - 5);
  return n;
}

}  // namespace

int cmd_serve(const std::vector<std::string>& argv) {
  std::vector<std::string> server_argv;
  std::vector<ModelArgs> model_args;
  split_args(argv, &server_argv, &model_args);
  std::set<std::string> valued = kModelOptions;
  valued.insert({"host", "port", "max-batch", "max-delay-ms", "max-queue", "max-request-mb", "max-json-mb",
                 "http-threads"});
  Args args("serve", server_argv, valued, {"help", "log", "check-finite"});
  if (args.has("help")) {
    std::fputs(kServeHelp, stdout);
    std::fputs(model_options_help().c_str(), stdout);
    return 0;
  }
  MAMBACV_USAGE_CHECK(!model_args.empty(), "--model is required (one per served model, each with its --weights)");
  MAMBACV_USAGE_CHECK(args.positionals().empty(), "serve takes no positional arguments, got '" << args.positionals()[0] << "'");
  const std::string host = args.get("host", "127.0.0.1");
  const int port = args.get_int("port", 8000);
  const int max_batch = args.get_int("max-batch", 8);
  const double max_delay_ms = args.get_double("max-delay-ms", 5);
  const int max_queue = args.get_int("max-queue", 32);
  const double max_request_mb = args.get_double("max-request-mb", 64);
  const double max_json_mb = args.get_double("max-json-mb", 16);
  const int http_threads = args.get_int("http-threads", 64);
  MAMBACV_USAGE_CHECK(port >= 0 && port <= 65535, "--port: expected 0 to 65535, got " << port);
  MAMBACV_USAGE_CHECK(max_batch >= 1 && max_batch <= 1024, "--max-batch: expected 1 to 1024, got " << max_batch);
  MAMBACV_USAGE_CHECK(max_delay_ms >= 0 && max_delay_ms <= 60000, "--max-delay-ms: expected 0 to 60000, got " << max_delay_ms);
  MAMBACV_USAGE_CHECK(max_queue >= 1 && max_queue <= 100000, "--max-queue: expected 1 to 100000, got " << max_queue);
  MAMBACV_USAGE_CHECK(max_request_mb > 0 && max_request_mb <= 4096, "--max-request-mb: expected 0 to 4096, got " << max_request_mb);
  MAMBACV_USAGE_CHECK(max_json_mb > 0 && max_json_mb <= 4096, "--max-json-mb: expected 0 to 4096, got " << max_json_mb);
  MAMBACV_USAGE_CHECK(http_threads >= 1 && http_threads <= 4096, "--http-threads: expected 1 to 4096, got " << http_threads);
  const Options opt = args.model_options();
  MAMBACV_USAGE_CHECK(opt.device == Device::Cpu, "--device cuda: the models do not run on CUDA yet; serve on the CPU");

  Server s;
  s.log = args.has("log");
  s.dtype = opt.dtype;
  std::set<std::string> names;
  for (const ModelArgs& ma : model_args) {
    auto m = std::make_unique<ServedModel>();
    m->name = model_name_of(ma);
    MAMBACV_USAGE_CHECK(!m->name.empty() && m->name.find('/') == std::string::npos,
                        "--name: expected a name without '/', got '" << m->name << "'");
    MAMBACV_USAGE_CHECK(names.insert(m->name).second, "two models are named '" << m->name << "'; give one --name");
    s.models.push_back(std::move(m));
  }

  // A client that disconnects while its response is written must not end the process.
  signal(SIGPIPE, SIG_IGN);
  // SIGTERM / SIGINT: the handler (on whichever thread the signal lands) writes the signal number into a pipe that
  // one thread waits on; libraries may start threads before this point, so blocking signals would not cover them.
  MAMBACV_CHECK(pipe(g_signal_pipe) == 0, "serve: cannot create the signal pipe");
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  httplib::Server http;
  http.new_task_queue = [http_threads] { return new httplib::ThreadPool(static_cast<size_t>(http_threads)); };
  const size_t max_request_bytes = static_cast<size_t>(max_request_mb * 1024 * 1024);
  const size_t max_json_bytes = static_cast<size_t>(max_json_mb * 1024 * 1024);
  // the infer handler enforces --max-request-mb itself (refusing and closing); httplib's own check would answer 413
  // and then leave the connection open with the body unread
  http.set_payload_max_length(std::numeric_limits<size_t>::max());
  http.set_read_timeout(30, 0);
  http.set_write_timeout(30, 0);
  http.set_keep_alive_timeout(5);
  http.set_keep_alive_max_count(1000);

  auto guard = [](httplib::Response& res, const std::function<void()>& body) {
    try {
      body();
    } catch (const HttpError& e) {
      send_json(res, e.status(), error_body(e.what()));
    } catch (const std::exception& e) {
      send_json(res, 500, error_body(e.what()));
    }
  };

  http.Get("/v2/health/live", [&](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, "{\"live\":true}");
  });
  http.Get("/v2/health/ready", [&](const httplib::Request&, httplib::Response& res) {
    const bool ready = s.loaded && !s.draining;
    send_json(res, ready ? 200 : 400, ready ? "{\"ready\":true}" : "{\"ready\":false}");
  });
  http.Get("/v2", [&](const httplib::Request&, httplib::Response& res) {
    ojson j{{"name", "mambacv"}, {"version", MAMBACV_VERSION_STRING},
            {"extensions", {"binary_tensor_data", "classification"}}};
    send_json(res, 200, json_text(j));
  });
  http.Get(R"(/v2/models/([^/]+)(?:/versions/([^/]+))?)", [&](const httplib::Request& req, httplib::Response& res) {
    guard(res, [&] {
      ServedModel* m = s.find(req.matches[1], req.matches[2]);
      ojson j = model_metadata(*m, s.dtype);
      j["parameters"]["max_batch_size"] = max_batch;
      send_json(res, 200, json_text(j));
    });
  });
  http.Get(R"(/v2/models/([^/]+)(?:/versions/([^/]+))?/ready)", [&](const httplib::Request& req, httplib::Response& res) {
    guard(res, [&] {
      std::string name = req.matches[1], version = req.matches[2];
      bool ready = false;
      try {
        ready = s.find(name, version) != nullptr && !s.draining;
      } catch (const HttpError& e) {
        if (e.status() == 404) throw;
      }
      send_json(res, ready ? 200 : 400, json_text(ojson{{"name", name}, {"ready", ready}}));
    });
  });
  // The body is read through a content reader: httplib's own body reading would parse a body sent as
  // application/x-www-form-urlencoded (curl's default) as a form, and refuse it above 8 KiB.
  http.Post(R"(/v2/models/([^/]+)(?:/versions/([^/]+))?/infer)", [&](const httplib::Request& req, httplib::Response& res,
                                                                     const httplib::ContentReader& read_body) {
    const double t0 = now_s();
    ServedModel* m = nullptr;
    // Refused before the body is read: a declared length over the limit, or a chunked body that grows past it.
    if (req.has_header("Content-Length")) {
      const std::string cl = req.get_header_value("Content-Length");
      if (cl.size() > 18 || std::strtoull(cl.c_str(), nullptr, 10) > max_request_bytes) {
        send_json_and_close(req, res, 413, error_body("request body of " + cl + " bytes is over the limit of " +
                                                 std::to_string(max_request_bytes) + " (--max-request-mb)"));
        return;
      }
    }
    if (req.is_multipart_form_data()) {
      send_json_and_close(req, res, 415, error_body("multipart bodies are not accepted: send the request JSON "
                                               "(application/json) or the binary tensor data extension"));
      return;
    }
    std::string body;
    bool too_large = false, too_slow = false;
    const bool complete = read_body([&](const char* data, size_t n) {
      too_large = body.size() + n > max_request_bytes;
      too_slow = now_s() - t0 > kMaxBodySeconds;
      if (!too_large && !too_slow) body.append(data, n);
      return !too_large && !too_slow;
    });
    if (too_large || too_slow || !complete) {
      send_json_and_close(req, res, too_large ? 413 : too_slow ? 408 : 400,
                          error_body(too_large ? "request body is over the limit of " + std::to_string(max_request_bytes) +
                                                     " bytes (--max-request-mb)"
                                     : too_slow ? "request body took longer than " + std::to_string(int(kMaxBodySeconds)) +
                                                      " s to arrive"
                                                : "request body ended before its declared length"));
      return;
    }
    guard(res, [&] {
      m = s.find(req.matches[1], req.matches[2]);
      if (s.draining) throw HttpError(503, "the server is shutting down");
      std::string header_len;
      const bool binary = req.has_header("Inference-Header-Content-Length");
      if (binary) header_len = req.get_header_value("Inference-Header-Content-Length");
      const size_t json_bytes = binary ? std::min<size_t>(body.size(), std::strtoull(header_len.c_str(), nullptr, 10))
                                       : body.size();
      if (json_bytes > max_json_bytes)
        throw HttpError(413, "the request's JSON is " + std::to_string(json_bytes) + " bytes, over the limit of " +
                                 std::to_string(max_json_bytes) + " (--max-json-mb; large tensors travel compactly "
                                 "in the binary tensor data extension)");
      InferRequest ir = parse_infer_request(body, binary ? &header_len : nullptr);
      std::vector<RequestedOutput> wanted;
      std::unique_ptr<Job> job = make_job(*m, ir, s.dtype, max_batch, &wanted);
      std::future<JobResult> f = m->batcher->submit(std::move(job));
      JobResult r = f.get();
      if (!r.error.empty()) throw HttpError(r.status, r.error);
      EncodedResponse enc = encode_infer_response(m->name, "1", ir.id, make_outputs(*m, wanted, r));
      if (enc.json_length >= 0) res.set_header("Inference-Header-Content-Length", std::to_string(enc.json_length));
      res.status = 200;
      res.set_content(std::move(enc.body), enc.content_type.c_str());
    });
    if (m) {
      std::lock_guard<std::mutex> lk(m->metrics.mu);
      if (res.status == 200) ++m->metrics.success;
      else if (res.status != 503) ++m->metrics.failure;
      m->metrics.latency.observe(now_s() - t0);
    }
  });
  http.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_text(s), "text/plain; version=0.0.4");
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || res.content_length_ > 0) return;  // an answer of ours (body or content provider)
    std::string msg;
    if (res.status == 413) msg = "request body too large (--max-request-mb)";
    else if (res.status == 404) msg = "no such endpoint: " + req.method + " " + req.path;
    else msg = "HTTP status " + std::to_string(res.status);
    res.set_content(error_body(msg), "application/json");
  });
  // one line per request (--log) and the response-code counters
  thread_local double request_start = 0;
  http.set_pre_routing_handler([](const httplib::Request&, httplib::Response&) {
    request_start = now_s();
    return httplib::Server::HandlerResponse::Unhandled;
  });
  http.set_logger([&s](const httplib::Request& req, const httplib::Response& res) {
    {
      std::lock_guard<std::mutex> lk(s.http_mu);
      ++s.http_status[res.status];
    }
    if (s.log)
      std::fprintf(stderr, "%s %s %s %d %zu %.1fms\n", req.remote_addr.c_str(), req.method.c_str(), req.path.c_str(),
                   res.status, res.body.size(), (now_s() - request_start) * 1e3);
  });

  int bound = port;
  if (port == 0) {
    bound = http.bind_to_any_port(host);
    MAMBACV_CHECK(bound > 0, "--host " << host << ": cannot listen on a free port");
  } else {
    MAMBACV_CHECK(http.bind_to_port(host, port), "--host " << host << " --port " << port
                                                           << ": cannot listen there (in use, or not an address of this machine)");
  }
  std::printf("mambacv serve: listening on http://%s:%d\n", host.c_str(), bound);
  std::fflush(stdout);

  std::atomic<int> exit_code{0};
  std::atomic<bool> listen_ended{false};
  // httplib's stop() does nothing before listening has begun: wait for it, so an early signal or load failure
  // still ends the server.
  auto stop_server = [&] {
    while (!http.is_running() && !listen_ended) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    http.stop();
  };
  std::thread signals([&] {
    unsigned char sig = 0;
    while (read(g_signal_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    if (sig == 0) return;  // written by the main thread: the server ended for another reason
    std::fprintf(stderr, "mambacv serve: %s: finishing the requests in flight\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    s.draining = true;
    if (s.loaded)
      for (auto& m : s.models) m->batcher->flush();
    stop_server();
  });
  std::thread loader([&] {
    try {
      for (size_t i = 0; i < s.models.size() && !s.draining; ++i) {
        load_model(*s.models[i], model_args[i], opt, max_batch, max_delay_ms / 1e3, max_queue);
        std::fprintf(stderr, "mambacv serve: model '%s' (%s) ready\n", s.models[i]->name.c_str(),
                     s.models[i]->cfg.name.c_str());
      }
      if (!s.draining) s.loaded = true;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "mambacv serve: error: %s\n", e.what());
      exit_code = 1;
      s.draining = true;
      stop_server();
    }
  });

  http.listen_after_bind();  // returns after stop(), once the handlers in flight have answered
  listen_ended = true;
  loader.join();
  s.draining = true;
  for (auto& m : s.models)
    if (m->batcher) m->batcher->stop();
  const unsigned char end = 0;
  (void)!write(g_signal_pipe[1], &end, 1);
  signals.join();
  return exit_code;
}

}  // namespace mambacv::cli
