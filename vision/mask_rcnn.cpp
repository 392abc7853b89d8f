// vision/mask_rcnn.cpp - arch "mask_rcnn": mmdetection 2.11 MaskRCNN (TwoStageDetector.simple_test) with a VMamba
// Backbone_VSSM, FPN neck, RPNHead and StandardRoIHead (Shared2FCBBoxHead + FCNMaskHead). The config is
// mmdetection's model dict: {"backbone": {VSSM kwargs}, "neck": {...}, "rpn_head": {...}, "roi_head": {...},
// "test_cfg": {"rpn": {...}, "rcnn": {...}}}; every width comes from it and is checked against the weights.
#include <chrono>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "kernels/detection_ops.h"
#include "kernels/ops.h"
#include "vision/detection_heads.h"
#include "vision/mask_rcnn.h"
#include "vision/network.h"

namespace mambacv::detail {

namespace {

using json = nlohmann::json;

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Typed access to a nested mmdetection dict with errors naming the config and the key path.
class Obj {
 public:
  Obj(const json& j, std::string where) : j_(j), where_(std::move(where)) {
    MAMBACV_CHECK(j_.is_object(), where_ << ": expected an object, got " << j_.dump());
  }
  bool has(const std::string& k) const { return j_.contains(k) && !j_[k].is_null(); }
  Obj obj(const std::string& k) const {
    MAMBACV_CHECK(has(k), where_ << ": missing key \"" << k << "\"");
    return Obj(j_[k], where_ + "." + k);
  }
  Obj obj_or_empty(const std::string& k) const { return has(k) ? obj(k) : Obj(empty_, where_ + "." + k); }
  int64_t integer(const std::string& k, int64_t def, bool required = false) const {
    if (!has(k)) {
      MAMBACV_CHECK(!required, where_ << ": missing integer key \"" << k << "\"");
      return def;
    }
    const json& v = j_[k];
    MAMBACV_CHECK(v.is_number_integer() || (v.is_number() && std::floor(v.get<double>()) == v.get<double>()),
                  where_ << "." << k << ": expected an integer, got " << v.dump());
    return static_cast<int64_t>(v.get<double>());
  }
  double number(const std::string& k, double def) const {
    if (!has(k)) return def;
    MAMBACV_CHECK(j_[k].is_number(), where_ << "." << k << ": expected a number, got " << j_[k].dump());
    return j_[k].get<double>();
  }
  bool boolean(const std::string& k, bool def) const {
    if (!has(k)) return def;
    MAMBACV_CHECK(j_[k].is_boolean(), where_ << "." << k << ": expected true or false, got " << j_[k].dump());
    return j_[k].get<bool>();
  }
  std::string str(const std::string& k, const std::string& def) const {
    if (!has(k)) return def;
    MAMBACV_CHECK(j_[k].is_string(), where_ << "." << k << ": expected a string, got " << j_[k].dump());
    return j_[k].get<std::string>();
  }
  std::vector<double> numbers(const std::string& k, const std::vector<double>& def) const {
    if (!has(k)) return def;
    const json& v = j_[k];
    if (v.is_number()) return {v.get<double>()};
    MAMBACV_CHECK(v.is_array() && !v.empty(), where_ << "." << k << ": expected a list of numbers, got " << v.dump());
    std::vector<double> out;
    for (const auto& e : v) {
      MAMBACV_CHECK(e.is_number(), where_ << "." << k << ": expected a list of numbers, got " << v.dump());
      out.push_back(e.get<double>());
    }
    return out;
  }
  void type_is(const std::vector<std::string>& ok) const {
    if (!has("type")) return;
    const std::string t = str("type", "");
    std::string list;
    for (const auto& s : ok) {
      if (t == s) return;
      list += (list.empty() ? "" : ", ") + s;
    }
    MAMBACV_FAIL(where_ << ".type: \"" << t << "\" is not supported (supported: " << list << ")");
  }
  void known(const std::set<std::string>& keys) const {
    for (const auto& [k, v] : j_.items()) {
      if (keys.count(k)) continue;
      std::string list;
      for (const auto& s : keys) list += (list.empty() ? "" : ", ") + s;
      MAMBACV_FAIL(where_ << ": unknown key \"" << k << "\" (known keys: " << list << ")");
    }
  }
  const json& raw() const { return j_; }
  const std::string& where() const { return where_; }

 private:
  inline static const json empty_ = json::object();
  const json& j_;
  std::string where_;
};

std::array<float, 4> four(const std::vector<double>& v, const std::string& where) {
  MAMBACV_CHECK(v.size() == 4, where << ": expected 4 numbers, got " << v.size());
  return {static_cast<float>(v[0]), static_cast<float>(v[1]), static_cast<float>(v[2]), static_cast<float>(v[3])};
}

struct RoiExtractorCfg {
  int64_t out_size = 7;
  int sampling_ratio = 0;
  bool aligned = true;
  float finest_scale = 56;
  std::vector<float> strides{4, 8, 16, 32};
  int64_t channels = 256;
};

struct MaskRcnnConfig {
  ModelConfig backbone;
  std::vector<int64_t> fpn_in;
  int64_t fpn_out = 256;
  int num_outs = 5;
  int64_t rpn_feat = 256;
  heads::RpnConfig rpn;
  RoiExtractorCfg box_roi, mask_roi;
  int64_t fc_out = 1024, num_classes = 80, box_roi_size = 7;
  heads::RcnnConfig rcnn;
  int64_t mask_convs = 4, mask_channels = 256, mask_in = 256, mask_kernel = 3, mask_num_classes = 80;
};

RoiExtractorCfg parse_roi_extractor(const Obj& o) {
  o.type_is({"SingleRoIExtractor"});
  o.known({"type", "roi_layer", "out_channels", "featmap_strides", "finest_scale", "init_cfg"});
  RoiExtractorCfg r;
  Obj layer = o.obj("roi_layer");
  layer.type_is({"RoIAlign"});
  layer.known({"type", "output_size", "sampling_ratio", "aligned", "pool_mode", "use_torchvision"});
  r.out_size = layer.integer("output_size", 7, true);
  r.sampling_ratio = static_cast<int>(layer.integer("sampling_ratio", 0));
  r.aligned = layer.boolean("aligned", true);
  MAMBACV_CHECK(layer.str("pool_mode", "avg") == "avg", layer.where() << ".pool_mode: only \"avg\" is supported");
  r.channels = o.integer("out_channels", 256, true);
  r.finest_scale = static_cast<float>(o.number("finest_scale", 56));
  r.strides.clear();
  for (double s : o.numbers("featmap_strides", {4, 8, 16, 32})) r.strides.push_back(static_cast<float>(s));
  return r;
}

MaskRcnnConfig parse_mask_rcnn(const ModelConfig& mc) {
  json root;
  try {
    root = json::parse(mc.json);
  } catch (const std::exception& e) {
    MAMBACV_FAIL("config " << mc.name << ": \"config\" is not valid JSON (" << e.what() << ")");
  }
  const std::string where = "config " + (mc.path.empty() ? mc.name : mc.path);
  Obj top(root, where);
  top.type_is({"MaskRCNN"});
  top.known({"type", "backbone", "neck", "rpn_head", "roi_head", "test_cfg", "train_cfg", "pretrained", "init_cfg"});
  MaskRcnnConfig c;

  // backbone: the Backbone_VSSM kwargs, built by the vmamba_backbone network
  Obj bb = top.obj("backbone");
  c.backbone.name = mc.name + ":backbone";
  c.backbone.path = "";
  c.backbone.arch = "vmamba_backbone";
  c.backbone.json = bb.raw().dump();
  const std::string bb_arch = bb.str("arch", "vmamba_backbone");
  MAMBACV_CHECK(bb_arch == "vmamba_backbone",
                bb.where() << ".arch: \"" << bb_arch << "\" is not supported (supported: vmamba_backbone)");

  Obj neck = top.obj("neck");
  neck.type_is({"FPN"});
  neck.known({"type", "in_channels", "out_channels", "num_outs", "start_level", "end_level", "add_extra_convs",
              "relu_before_extra_convs", "no_norm_on_lateral", "upsample_cfg", "conv_cfg", "norm_cfg", "act_cfg",
              "init_cfg"});
  for (double v : neck.numbers("in_channels", {})) c.fpn_in.push_back(static_cast<int64_t>(v));
  MAMBACV_CHECK(!c.fpn_in.empty(), neck.where() << ": \"in_channels\" is required");
  c.fpn_out = neck.integer("out_channels", 256, true);
  c.num_outs = static_cast<int>(neck.integer("num_outs", 5));
  MAMBACV_CHECK(neck.integer("start_level", 0) == 0, neck.where() << ".start_level: only 0 is supported");
  MAMBACV_CHECK(neck.integer("end_level", -1) == -1, neck.where() << ".end_level: only -1 is supported");
  MAMBACV_CHECK(!neck.has("add_extra_convs") || (neck.raw()["add_extra_convs"].is_boolean() &&
                                                 !neck.raw()["add_extra_convs"].get<bool>()),
                neck.where() << ".add_extra_convs: only false (extra levels by max-pooling) is supported");
  MAMBACV_CHECK(!neck.has("norm_cfg"), neck.where() << ".norm_cfg: normalised FPN convs are not supported");
  if (neck.has("upsample_cfg")) {
    Obj up = neck.obj("upsample_cfg");
    MAMBACV_CHECK(up.str("mode", "nearest") == "nearest" && !up.has("scale_factor"),
                  up.where() << ": only {\"mode\": \"nearest\"} (resize to the finer level's size) is supported");
  }
  MAMBACV_CHECK(c.num_outs >= static_cast<int>(c.fpn_in.size()),
                neck.where() << ".num_outs: " << c.num_outs << " < " << c.fpn_in.size() << " input levels");

  Obj rpn = top.obj("rpn_head");
  rpn.type_is({"RPNHead"});
  rpn.known({"type", "in_channels", "feat_channels", "anchor_generator", "bbox_coder", "loss_cls", "loss_bbox",
             "init_cfg", "train_cfg", "test_cfg"});
  MAMBACV_CHECK(rpn.integer("in_channels", c.fpn_out) == c.fpn_out,
                rpn.where() << ".in_channels must equal the FPN out_channels " << c.fpn_out);
  c.rpn_feat = rpn.integer("feat_channels", c.fpn_out);
  {
    Obj ag = rpn.obj("anchor_generator");
    ag.type_is({"AnchorGenerator"});
    ag.known({"type", "scales", "ratios", "strides", "base_sizes", "center_offset", "scale_major"});
    MAMBACV_CHECK(!ag.has("base_sizes") && ag.number("center_offset", 0) == 0 && ag.boolean("scale_major", true),
                  ag.where() << ": only base_sizes = strides, center_offset 0, scale_major true are supported");
    c.rpn.scales.clear();
    c.rpn.ratios.clear();
    c.rpn.strides.clear();
    for (double v : ag.numbers("scales", {8})) c.rpn.scales.push_back(static_cast<float>(v));
    for (double v : ag.numbers("ratios", {0.5, 1.0, 2.0})) c.rpn.ratios.push_back(static_cast<float>(v));
    for (double v : ag.numbers("strides", {4, 8, 16, 32, 64})) c.rpn.strides.push_back(static_cast<float>(v));
    MAMBACV_CHECK(static_cast<int>(c.rpn.strides.size()) == c.num_outs,
                  ag.where() << ".strides: " << c.rpn.strides.size() << " strides for " << c.num_outs
                             << " FPN levels");
    Obj coder = rpn.obj_or_empty("bbox_coder");
    coder.type_is({"DeltaXYWHBBoxCoder"});
    c.rpn.means = four(coder.numbers("target_means", {0, 0, 0, 0}), coder.where() + ".target_means");
    c.rpn.stds = four(coder.numbers("target_stds", {1, 1, 1, 1}), coder.where() + ".target_stds");
  }

  Obj roi = top.obj("roi_head");
  roi.type_is({"StandardRoIHead"});
  roi.known({"type", "bbox_roi_extractor", "bbox_head", "mask_roi_extractor", "mask_head", "init_cfg", "train_cfg",
             "test_cfg", "shared_head"});
  MAMBACV_CHECK(!roi.has("shared_head"), roi.where() << ".shared_head is not supported");
  c.box_roi = parse_roi_extractor(roi.obj("bbox_roi_extractor"));
  c.mask_roi = parse_roi_extractor(roi.obj("mask_roi_extractor"));
  {
    Obj bh = roi.obj("bbox_head");
    bh.type_is({"Shared2FCBBoxHead"});
    bh.known({"type", "in_channels", "fc_out_channels", "roi_feat_size", "num_classes", "bbox_coder",
              "reg_class_agnostic", "loss_cls", "loss_bbox", "init_cfg", "with_avg_pool", "with_cls", "with_reg"});
    MAMBACV_CHECK(!bh.boolean("reg_class_agnostic", false) && !bh.boolean("with_avg_pool", false),
                  bh.where() << ": only class-specific regression without average pooling is supported");
    MAMBACV_CHECK(bh.integer("in_channels", c.box_roi.channels) == c.box_roi.channels,
                  bh.where() << ".in_channels must equal bbox_roi_extractor.out_channels " << c.box_roi.channels);
    c.fc_out = bh.integer("fc_out_channels", 1024);
    c.box_roi_size = bh.integer("roi_feat_size", 7);
    MAMBACV_CHECK(c.box_roi_size == c.box_roi.out_size,
                  bh.where() << ".roi_feat_size " << c.box_roi_size << " != roi_layer.output_size "
                             << c.box_roi.out_size);
    c.num_classes = bh.integer("num_classes", 80);
    Obj coder = bh.obj_or_empty("bbox_coder");
    coder.type_is({"DeltaXYWHBBoxCoder"});
    c.rcnn.means = four(coder.numbers("target_means", {0, 0, 0, 0}), coder.where() + ".target_means");
    c.rcnn.stds = four(coder.numbers("target_stds", {0.1, 0.1, 0.2, 0.2}), coder.where() + ".target_stds");
  }
  {
    Obj mh = roi.obj("mask_head");
    mh.type_is({"FCNMaskHead"});
    mh.known({"type", "num_convs", "in_channels", "conv_out_channels", "num_classes", "roi_feat_size",
              "conv_kernel_size", "upsample_cfg", "class_agnostic", "loss_mask", "init_cfg", "predictor_cfg"});
    c.mask_convs = mh.integer("num_convs", 4);
    c.mask_in = mh.integer("in_channels", c.mask_roi.channels);
    MAMBACV_CHECK(c.mask_in == c.mask_roi.channels,
                  mh.where() << ".in_channels must equal mask_roi_extractor.out_channels " << c.mask_roi.channels);
    c.mask_channels = mh.integer("conv_out_channels", 256);
    c.mask_kernel = mh.integer("conv_kernel_size", 3);
    MAMBACV_CHECK(c.mask_kernel % 2 == 1, mh.where() << ".conv_kernel_size must be odd");
    c.mask_num_classes = mh.integer("num_classes", c.num_classes);
    MAMBACV_CHECK(c.mask_num_classes == c.num_classes,
                  mh.where() << ".num_classes " << c.mask_num_classes << " != bbox_head.num_classes " << c.num_classes);
    MAMBACV_CHECK(!mh.boolean("class_agnostic", false), mh.where() << ".class_agnostic is not supported");
    if (mh.has("upsample_cfg")) {
      Obj up = mh.obj("upsample_cfg");
      MAMBACV_CHECK(up.str("type", "deconv") == "deconv" && up.integer("scale_factor", 2) == 2,
                    up.where() << ": only {\"type\": \"deconv\", \"scale_factor\": 2} is supported");
    }
  }
  MAMBACV_CHECK(c.box_roi.channels == c.fpn_out && c.mask_roi.channels == c.fpn_out,
                roi.where() << ": the RoI extractors' out_channels must equal the FPN out_channels " << c.fpn_out);
  MAMBACV_CHECK(c.box_roi.strides.size() <= c.fpn_in.size() + (c.num_outs - c.fpn_in.size()) &&
                    c.mask_roi.strides.size() <= static_cast<size_t>(c.num_outs),
                roi.where() << ": more RoI featmap_strides than FPN levels");

  // test_cfg (the mmdetection 2.x spelling; 1.x "nms_thr" / "max_num" accepted)
  Obj test = top.obj_or_empty("test_cfg");
  {
    Obj r = test.obj_or_empty("rpn");
    r.known({"nms_pre", "max_per_img", "max_num", "nms", "nms_thr", "min_bbox_size", "nms_across_levels",
             "nms_post"});
    c.rpn.nms_pre = r.integer("nms_pre", 1000);
    c.rpn.max_per_img = r.integer("max_per_img", r.integer("max_num", 1000));
    c.rpn.iou_thr = static_cast<float>(r.has("nms") ? r.obj("nms").number("iou_threshold", 0.7)
                                                    : r.number("nms_thr", 0.7));
    if (r.has("nms")) r.obj("nms").type_is({"nms"});
    c.rpn.min_bbox_size = static_cast<float>(r.number("min_bbox_size", 0));
    MAMBACV_CHECK(!r.boolean("nms_across_levels", false), r.where() << ".nms_across_levels is not supported");
  }
  {
    Obj r = test.obj_or_empty("rcnn");
    r.known({"score_thr", "nms", "max_per_img", "mask_thr_binary"});
    c.rcnn.score_thr = static_cast<float>(r.number("score_thr", 0.05));
    c.rcnn.iou_thr = static_cast<float>(r.has("nms") ? r.obj("nms").number("iou_threshold", 0.5) : 0.5);
    if (r.has("nms")) r.obj("nms").type_is({"nms"});
    c.rcnn.max_per_img = r.integer("max_per_img", 100);
    c.rcnn.mask_thr = static_cast<float>(r.number("mask_thr_binary", 0.5));
  }
  return c;
}

class MaskRcnnNetwork final : public Network {
 public:
  explicit MaskRcnnNetwork(const ModelConfig& mc) : cfg_(parse_mask_rcnn(mc)), backbone_(make_network(cfg_.backbone)) {
    MAMBACV_CHECK(backbone_->arch() == "vmamba_backbone",
                  "config " << mc.name << ": the backbone must be a vmamba_backbone");
  }

  const std::string& arch() const override { return arch_; }
  int input_size() const override { return 800; }
  int num_classes() const override { return 0; }  // no classifier: use the Detector API

  std::vector<ParamSpec> param_specs() const override {
    std::vector<ParamSpec> s;
    for (ParamSpec p : backbone_->param_specs()) {
      p.name = "backbone." + p.name;
      s.push_back(p);
    }
    const MaskRcnnConfig& c = cfg_;
    auto conv = [&](const std::string& n, int64_t co, int64_t ci, int64_t k) {
      s.push_back({n + ".weight", {co, ci, k, k}});
      s.push_back({n + ".bias", {co}});
    };
    for (size_t i = 0; i < c.fpn_in.size(); ++i) conv("neck.lateral_convs." + std::to_string(i) + ".conv", c.fpn_out,
                                                       c.fpn_in[i], 1);
    for (size_t i = 0; i < c.fpn_in.size(); ++i)
      conv("neck.fpn_convs." + std::to_string(i) + ".conv", c.fpn_out, c.fpn_out, 3);
    const int64_t A = c.rpn.num_anchors();
    conv("rpn_head.rpn_conv", c.rpn_feat, c.fpn_out, 3);
    conv("rpn_head.rpn_cls", A, c.rpn_feat, 1);
    conv("rpn_head.rpn_reg", 4 * A, c.rpn_feat, 1);
    const std::string b = "roi_head.bbox_head.";
    const int64_t r = c.box_roi_size;
    s.push_back({b + "shared_fcs.0.weight", {c.fc_out, c.fpn_out * r * r}});
    s.push_back({b + "shared_fcs.0.bias", {c.fc_out}});
    s.push_back({b + "shared_fcs.1.weight", {c.fc_out, c.fc_out}});
    s.push_back({b + "shared_fcs.1.bias", {c.fc_out}});
    s.push_back({b + "fc_cls.weight", {c.num_classes + 1, c.fc_out}});
    s.push_back({b + "fc_cls.bias", {c.num_classes + 1}});
    s.push_back({b + "fc_reg.weight", {4 * c.num_classes, c.fc_out}});
    s.push_back({b + "fc_reg.bias", {4 * c.num_classes}});
    const std::string m = "roi_head.mask_head.";
    for (int64_t i = 0; i < c.mask_convs; ++i)
      conv(m + "convs." + std::to_string(i) + ".conv", c.mask_channels, i == 0 ? c.mask_in : c.mask_channels,
           c.mask_kernel);
    const int64_t mc_last = c.mask_convs > 0 ? c.mask_channels : c.mask_in;
    s.push_back({m + "upsample.weight", {mc_last, mc_last, 2, 2}});
    s.push_back({m + "upsample.bias", {mc_last}});
    conv(m + "conv_logits", c.num_classes, mc_last, 1);
    return s;
  }

  // backbone.* goes through the backbone's own canonicalisation (alternative VMamba spellings); 1x1 convolution
  // weights given as (O, I) become (O, I, 1, 1).
  TensorMap canonicalize(const TensorMap& w) const override {
    TensorMap bb, out;
    for (const auto& [n, t] : w) {
      if (starts_with(n, "backbone.")) {
        bb[n] = t;
        continue;
      }
      Tensor v = t;
      const bool one_by_one = (starts_with(n, "neck.lateral_convs.") || n == "rpn_head.rpn_cls.weight" ||
                               n == "rpn_head.rpn_reg.weight" || n == "roi_head.mask_head.conv_logits.weight") &&
                              n.size() > 7 && n.compare(n.size() - 7, 7, ".weight") == 0;
      if (one_by_one && v.ndim() == 2) v = v.reshape({v.dim(0), v.dim(1), 1, 1});
      out[n] = v;
    }
    if (!bb.empty())
      for (const auto& [n, t] : backbone_->canonicalize(bb)) out["backbone." + n] = t;
    return out;
  }

  void bind(TensorMap w, DType gemm_storage) override {
    TensorMap bb;
    for (const auto& [n, t] : w) {
      if (starts_with(n, "backbone."))
        bb[n.substr(9)] = t;
      else
        w_[n] = t;
    }
    backbone_->bind(std::move(bb), gemm_storage);  // the heads keep f32
    const MaskRcnnConfig& c = cfg_;
    // Prepared layers drop their raw tensors (the fast heads read only the prepared form); conv_logits and the
    // upsample bias stay in w_ because mask_head_probs reads them raw.
    auto conv = [&](const std::string& n, int k, bool keep_raw = false) {
      const Tensor& t = w_.at(n + ".weight");
      heads::ConvW cw;
      cw.w = t.f32();
      cw.b = w_.at(n + ".bias").f32();
      cw.cout = t.dim(0);
      cw.cin = t.dim(1);
      cw.k = k;
      cw.prepare();
      if (!keep_raw) {
        cw.w = cw.b = nullptr;
        w_.erase(n + ".weight");
        w_.erase(n + ".bias");
      }
      return cw;
    };
    auto lin = [&](const std::string& n) {
      const Tensor& t = w_.at(n + ".weight");
      heads::LinearW l{t.f32(), w_.at(n + ".bias").f32(), t.dim(0), t.dim(1), {}};
      l.prepare();
      l.w = l.b = nullptr;
      w_.erase(n + ".weight");
      w_.erase(n + ".bias");
      return l;
    };
    fpn_.num_outs = c.num_outs;
    for (size_t i = 0; i < c.fpn_in.size(); ++i) {
      fpn_.lateral.push_back(conv("neck.lateral_convs." + std::to_string(i) + ".conv", 1));
      fpn_.output.push_back(conv("neck.fpn_convs." + std::to_string(i) + ".conv", 3));
    }
    rpn_.conv = conv("rpn_head.rpn_conv", 3);
    rpn_.cls = conv("rpn_head.rpn_cls", 1);
    rpn_.reg = conv("rpn_head.rpn_reg", 1);
    box_.fc1 = lin("roi_head.bbox_head.shared_fcs.0");
    box_.fc2 = lin("roi_head.bbox_head.shared_fcs.1");
    box_.cls = lin("roi_head.bbox_head.fc_cls");
    box_.reg = lin("roi_head.bbox_head.fc_reg");
    for (int64_t i = 0; i < c.mask_convs; ++i)
      mask_.convs.push_back(conv("roi_head.mask_head.convs." + std::to_string(i) + ".conv",
                                 static_cast<int>(c.mask_kernel)));
    const Tensor& up = w_.at("roi_head.mask_head.upsample.weight");
    mask_.up_packed = heads::pack_deconv2x2(up.f32(), up.dim(0), up.dim(1));
    mask_.up_b = w_.at("roi_head.mask_head.upsample.bias").f32();
    mask_.up_cout = up.dim(1);
    w_.erase("roi_head.mask_head.upsample.weight");
    mask_.logits = conv("roi_head.mask_head.conv_logits", 1, /*keep_raw=*/true);
  }

  std::map<std::string, Tensor> forward(const ExecContext& ctx, const ForwardCall& call) const override {
    const MaskRcnnConfig& c = cfg_;
    const Tensor& x = call.x;
    const Wanted& want = call.wanted;
    const int64_t B = x.dim(0), Hp = x.dim(2), Wp = x.dim(3);
    DetectionCall local;
    DetectionCall* req = call.detection;
    const bool api_only = !req && want.names.count("api_features") > 0 && !want.has("detections");
    if (!req) {
      req = &local;
      req->want_tensors = true;
      req->want_bitmaps = want.has("det_masks");
      req->masks = want.has("det_masks");
      for (int64_t b = 0; b < B; ++b) req->images.push_back({Hp, Wp, false, Hp, Wp, 1.0f, 1.0f});
    }
    MAMBACV_CHECK(static_cast<int64_t>(req->images.size()) == B,
                  "mask_rcnn: " << req->images.size() << " image shapes for a batch of " << B);
    for (const MaskRcnnImage& im : req->images)
      MAMBACV_CHECK(im.img_h >= 1 && im.img_w >= 1 && im.img_h <= Hp && im.img_w <= Wp,
                    "mask_rcnn: img_shape " << im.img_h << "x" << im.img_w << " must lie inside the " << Hp << "x"
                                            << Wp << " input");
    std::map<std::string, Tensor> out;

    // backbone: features.i (B, C_i, H_i, W_i)
    double t0 = now_ms();
    ForwardCall bcall;
    bcall.x = x;
    bcall.policy = call.policy;
    bcall.wanted = Wanted{{"api_features"}};
    std::map<std::string, Tensor> feats = backbone_->forward(ctx, bcall);
    req->backbone_ms = now_ms() - t0;
    std::vector<Tensor> fin;
    for (size_t i = 0; i < c.fpn_in.size(); ++i) {
      auto it = feats.find("features." + std::to_string(i));
      MAMBACV_CHECK(it != feats.end(), "mask_rcnn: the backbone gave no features." << i << " (out_indices must be 0.."
                                                                                   << c.fpn_in.size() - 1 << ")");
      if (req->want_tensors) out[it->first] = it->second;
      fin.push_back(ops::nchw_to_nhwc(ctx, it->second));
    }

    // FPN: levels (B, h, w, C) channels-last for the RPN, channels-first per image for RoIAlign
    t0 = now_ms();
    ctx.stage("fpn");
    std::vector<Tensor> levels = heads::fpn_forward(ctx, fin, fpn_);
    std::vector<Tensor> levels_nchw;
    for (const Tensor& l : levels) levels_nchw.push_back(ops::nhwc_to_nchw(ctx, l));
    req->fpn_ms = now_ms() - t0;
    if (req->want_tensors)
      for (size_t i = 0; i < levels.size(); ++i) out["fpn." + std::to_string(i)] = levels_nchw[i];
    if (api_only) return out;

    req->out.assign(static_cast<size_t>(B), {});
    for (int64_t b = 0; b < B; ++b) {
      run_heads(ctx, levels, levels_nchw, b, req->images[static_cast<size_t>(b)], *req,
                &req->out[static_cast<size_t>(b)]);
      if (req->want_tensors) {
        const MaskRcnnImageOut& o = req->out[static_cast<size_t>(b)];
        const std::string sfx = b == 0 ? "" : "." + std::to_string(b);
        out["proposals" + sfx] = o.proposals;
        const int64_t m = o.dets.size();
        Tensor db = Tensor::empty({m, 5});
        for (int64_t i = 0; i < m; ++i) {
          std::memcpy(db.f32() + i * 5, o.dets.boxes.f32() + i * 4, 4 * sizeof(float));
          db.f32()[i * 5 + 4] = o.dets.scores.f32()[i];
        }
        out["det_bboxes" + sfx] = db;
        out["det_labels" + sfx] = o.dets.labels;
        if (o.mask_bitmaps.defined()) out["det_masks" + sfx] = o.mask_bitmaps;
      }
    }
    return out;
  }

 private:
  // RPN -> proposals -> box head -> masks for image b (StandardRoIHead.simple_test).
  void run_heads(const ExecContext& ctx, const std::vector<Tensor>& levels, const std::vector<Tensor>& levels_nchw,
                 int64_t b, const MaskRcnnImage& im, const DetectionCall& req, MaskRcnnImageOut* o) const {
    const MaskRcnnConfig& c = cfg_;
    double t0 = now_ms();
    ctx.stage("rpn");
    std::vector<heads::RpnLevelOut> rpn_out;
    for (const Tensor& l : levels) rpn_out.push_back(heads::rpn_head_level(ctx, l.slice0(b, b + 1), rpn_));
    {
      double bytes = 0;  // the scores and deltas it reads
      for (const heads::RpnLevelOut& r : rpn_out) bytes += static_cast<double>(r.scores.numel() + r.deltas.numel()) * 4;
      const OpTrace trace(ctx, "rpn_proposals", 0.0, bytes);  // top-k, box decoding and NMS (no FLOP count)
      o->proposals = heads::rpn_proposals(rpn_out, c.rpn, im.img_h, im.img_w);  // (k, 5)
    }
    o->rpn_ms = now_ms() - t0;

    // box head on the proposals
    t0 = now_ms();
    ctx.stage("box_head");
    auto image_maps = [&](const RoiExtractorCfg& rc) {
      std::vector<Tensor> maps;
      for (size_t l = 0; l < rc.strides.size(); ++l) {
        const Tensor& t = levels_nchw[l];
        maps.push_back(t.slice0(b, b + 1).reshape({t.dim(1), t.dim(2), t.dim(3)}));
      }
      return maps;
    };
    const int64_t k = o->proposals.dim(0);
    Tensor rois = Tensor::empty({k, 4});
    for (int64_t i = 0; i < k; ++i) std::memcpy(rois.f32() + i * 4, o->proposals.f32() + i * 5, 4 * sizeof(float));
    Tensor feats = det::multilevel_roi_align(ctx, image_maps(c.box_roi), c.box_roi.strides, rois, c.box_roi.out_size,
                                             c.box_roi.out_size, c.box_roi.sampling_ratio, c.box_roi.finest_scale,
                                             c.box_roi.aligned);  // (k, C, 7, 7)
    Tensor cls, deltas;
    heads::box_head_forward(ctx, feats, box_, &cls, &deltas);
    heads::RcnnConfig rc = c.rcnn;
    if (req.score_thr >= 0) rc.score_thr = req.score_thr;
    if (req.max_per_img >= 0) rc.max_per_img = req.max_per_img;
    heads::Detections d;
    {
      const OpTrace trace(ctx, "box_postprocess", 0.0, static_cast<double>(cls.numel() + deltas.numel()) * 4);
      d = heads::box_postprocess(o->proposals, cls, deltas, rc, im.img_h, im.img_w);
    }
    const int64_t m = d.size();
    // rescale=True: boxes / scale_factor; the mask RoIs are those boxes * scale_factor again (as mmdetection)
    Tensor mask_rois = d.boxes.clone();
    o->out_h = im.rescale ? im.ori_h : im.img_h;
    o->out_w = im.rescale ? im.ori_w : im.img_w;
    Tensor paste_boxes = d.boxes.clone();
    if (im.rescale) {
      const float s[4] = {im.scale_x, im.scale_y, im.scale_x, im.scale_y};
      const float lim[4] = {static_cast<float>(im.ori_w), static_cast<float>(im.ori_h), static_cast<float>(im.ori_w),
                            static_cast<float>(im.ori_h)};
      for (int64_t i = 0; i < m; ++i)
        for (int j = 0; j < 4; ++j) {
          const float v = d.boxes.f32()[i * 4 + j] / s[j];
          mask_rois.f32()[i * 4 + j] = v * s[j];
          paste_boxes.f32()[i * 4 + j] = mask_rois.f32()[i * 4 + j] / s[j];
          d.boxes.f32()[i * 4 + j] = std::min(std::max(v, 0.0f), lim[j]);
        }
    }
    o->dets = d;
    o->box_ms = now_ms() - t0;

    if (!req.masks || m == 0) {
      if (req.want_bitmaps) o->mask_bitmaps = Tensor::zeros({m, o->out_h, o->out_w}, DType::U8);
      return;
    }
    t0 = now_ms();
    ctx.stage("mask_head");
    Tensor mfeats = det::multilevel_roi_align(ctx, image_maps(c.mask_roi), c.mask_roi.strides, mask_rois,
                                              c.mask_roi.out_size, c.mask_roi.out_size, c.mask_roi.sampling_ratio,
                                              c.mask_roi.finest_scale, c.mask_roi.aligned);  // (m, C, 14, 14)
    Tensor probs = heads::mask_head_probs(ctx, mfeats, mask_, d.labels);                      // (m, 28, 28)
    const int64_t mh = probs.dim(1), mw = probs.dim(2), H = o->out_h, W = o->out_w;
    if (req.want_bitmaps) o->mask_bitmaps = Tensor::zeros({m, H, W}, DType::U8);
    o->masks.assign(static_cast<size_t>(m), {});
    for (int64_t i = 0; i < m; ++i) {
      const float* pb = paste_boxes.f32() + i * 4;
      heads::RleCounts& r = o->masks[static_cast<size_t>(i)];
      // simple_test_mask drops rows whose box has y2 == 0 (its padding rule): they get an empty mask
      if (mask_rois.f32()[i * 4 + 3] == 0.0f) {
        r = heads::rle_encode_window(nullptr, H, W, 0, 0, 0, 0);
        continue;
      }
      Tensor prob = probs.slice0(i, i + 1).reshape({mh, mw});
      Tensor bm = det::paste_mask(prob, {pb[0], pb[1], pb[2], pb[3]}, H, W, c.rcnn.mask_thr);  // (H, W) u8
      // paste_mask only sets pixels inside its skip_empty window: [floor(x1) - 1, ceil(x2) + 1) x (same for y)
      const int64_t x0 = static_cast<int64_t>(std::floor(pb[0])) - 1, x1 = static_cast<int64_t>(std::ceil(pb[2])) + 1;
      const int64_t y0 = static_cast<int64_t>(std::floor(pb[1])) - 1, y1 = static_cast<int64_t>(std::ceil(pb[3])) + 1;
      r = heads::rle_encode_window(static_cast<const uint8_t*>(bm.raw()), H, W, y0, y1, x0, x1);
      if (req.want_bitmaps)
        std::memcpy(static_cast<uint8_t*>(o->mask_bitmaps.raw()) + i * H * W, bm.raw(), static_cast<size_t>(H * W));
    }
    o->mask_ms = now_ms() - t0;
  }

  MaskRcnnConfig cfg_;
  std::unique_ptr<Network> backbone_;
  std::string arch_ = "mask_rcnn";
  TensorMap w_;  // the head tensors read raw (conv_logits, upsample bias)
  heads::FpnW fpn_;
  heads::RpnW rpn_;
  heads::BoxHeadW box_;
  heads::MaskHeadW mask_;
};

}  // namespace

std::unique_ptr<Network> make_mask_rcnn_network(const ModelConfig& mc) {
  return std::make_unique<MaskRcnnNetwork>(mc);
}

int detection_classes(const std::vector<ParamSpec>& specs) {
  for (const ParamSpec& p : specs)
    if (p.name == "roi_head.bbox_head.fc_cls.bias") return static_cast<int>(p.shape[0] - 1);
  return 0;
}

}  // namespace mambacv::detail
