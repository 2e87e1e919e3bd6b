// A collection of malformed networks, one per way a network file can be
// wrong: each must be refused with an InputError whose one-line message
// starts with the file and the JSON path of the problem. Nothing may crash,
// abort or throw anything else. (The exact wording of each rule is tested
// beside the rule in test_network.cpp.)
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "anvil/error.hpp"
#include "anvil/network.hpp"

namespace {

struct Malformed {
  std::string what;    // the mistake
  std::string json;    // the whole file
  std::string prefix;  // the message's start: "bad.json: <path>"
};

// Whether text is well-formed UTF-8 (no stray or missing continuation byte; overlong forms are not
// looked for): what a message echoing a file of valid UTF-8 must be.
bool valid_utf8(const std::string& text) {
  for (size_t i = 0; i < text.size();) {
    const auto lead = static_cast<unsigned char>(text[i]);
    const size_t length = lead < 0x80             ? 1
                          : (lead & 0xe0) == 0xc0 ? 2
                          : (lead & 0xf0) == 0xe0 ? 3
                          : (lead & 0xf8) == 0xf0 ? 4
                                                  : 0;
    if (length == 0 || i + length > text.size()) return false;
    for (size_t k = 1; k < length; ++k)
      if (!anvil::Error::is_continuation(text[i + k])) return false;
    i += length;
  }
  return true;
}

std::string net(const std::string& input, const std::string& layers, const std::string& extra = "") {
  return R"({"name": "t", "input": )" + input + R"(, "layers": )" + layers + extra + "}";
}
std::string one(const std::string& layer, const std::string& input = "[2, 4, 8, 8, 8]") {
  return net(input, "[" + layer + "]");
}
const std::string kConv3 = R"("type": "conv3d", "in_channels": 4, "out_channels": 2)";

const std::vector<Malformed> kMalformed = {
    // The document
    {"empty file", "", "bad.json: invalid JSON"},
    {"truncated", R"({"name": "t", "input": [1, 1, 4, 4])", "bad.json: invalid JSON"},
    {"trailing comma", R"({"name": "t",})", "bad.json: invalid JSON"},
    {"a list at the top", "[]", "bad.json: the network must be a JSON object"},
    {"a number at the top", "7", "bad.json: the network must be a JSON object"},
    {"a NUL byte", std::string("{\"name\": \"t\0\"}", 14), "bad.json: invalid JSON"},
    {"a NUL byte after a whole network", net("[1, 1, 4, 4]", R"([{"type": "relu"}])") + std::string("\0 {{{", 5),
     "bad.json: invalid JSON: a NUL byte at offset"},
    {"nesting 200 deep", R"({"name": "t", "seed": )" + std::string(200, '[') + std::string(200, ']') + "}",
     "bad.json: invalid JSON: nested more than 128 levels deep"},
    {"a duplicate top-level key", R"({"name": "t", "name": "u"})", "bad.json: name: duplicate key"},
    {"an unknown top-level key", net("[1, 1, 4, 4]", R"([{"type": "relu"}])", R"(, "epochs": 3)"), "bad.json: epochs"},
    // Top-level values
    {"no name", R"({"input": [1, 1, 4, 4], "layers": [{"type": "relu"}]})", "bad.json: name"},
    {"a numeric name", R"({"name": 1, "input": [1, 1, 4, 4], "layers": [{"type": "relu"}]})", "bad.json: name"},
    {"no input", R"({"name": "t", "layers": [{"type": "relu"}]})", "bad.json: input"},
    {"input not a list", net("7", R"([{"type": "relu"}])"), "bad.json: input"},
    {"input of 3 dims", net("[2, 4, 8]", R"([{"type": "relu"}])"), "bad.json: input"},
    {"input of 6 dims", net("[1, 1, 1, 1, 1, 1]", R"([{"type": "relu"}])"), "bad.json: input"},
    {"a zero dimension", net("[2, 0, 8, 8]", R"([{"type": "relu"}])"), "bad.json: input[1]"},
    {"a negative dimension", net("[2, -4, 8, 8]", R"([{"type": "relu"}])"), "bad.json: input[1]"},
    {"a float dimension", net("[2, 4.5, 8, 8]", R"([{"type": "relu"}])"), "bad.json: input[1]"},
    {"a string dimension", net(R"([2, "4", 8, 8])", R"([{"type": "relu"}])"), "bad.json: input[1]"},
    {"a dimension of 2^63 - 1", net("[2, 9223372036854775807, 8, 8]", R"([{"type": "relu"}])"), "bad.json: input[1]"},
    {"a dimension beyond int64", net("[2, 99999999999999999999, 8, 8]", R"([{"type": "relu"}])"), "bad.json: input[1]"},
    {"a dimension beyond double", net("[2, 4, 8, 1e400]", R"([{"type": "relu"}])"), "bad.json: input[3]"},
    {"an input of 2^41 elements", net("[2048, 1024, 1024, 1024]", R"([{"type": "relu"}])"), "bad.json: input"},
    {"no layers", R"({"name": "t", "input": [1, 1, 4, 4]})", "bad.json: layers"},
    {"layers not a list", net("[1, 1, 4, 4]", R"({"type": "relu"})"), "bad.json: layers"},
    {"empty layers", net("[1, 1, 4, 4]", "[]"), "bad.json: layers"},
    {"a layer that is a string", net("[1, 1, 4, 4]", R"(["relu"])"), "bad.json: layers[0]"},
    {"precision fp16", net("[1, 1, 4, 4]", R"([{"type": "relu"}])", R"(, "precision": "fp16")"), "bad.json: precision"},
    {"fuse as a string", net("[1, 1, 4, 4]", R"([{"type": "relu"}])", R"(, "fuse": "yes")"), "bad.json: fuse"},
    {"a negative seed", net("[1, 1, 4, 4]", R"([{"type": "relu"}])", R"(, "seed": -1)"), "bad.json: seed"},
    // The echoed value is cut after 37 bytes of its dump, here inside the first e acute (2 bytes).
    {"a long non-ASCII string for a seed",
     net("[1, 1, 4, 4]", R"([{"type": "relu"}])", R"(, "seed": ")" + std::string(35, 'a') + "\xc3\xa9\xc3\xa9\""),
     "bad.json: seed"},
    // Loss and optimizer
    {"an unknown loss", net("[1, 1, 4, 4]", R"([{"type": "relu"}])", R"(, "loss": "hinge")"), "bad.json: loss"},
    {"a loss of the wrong type", net("[1, 1, 4, 4]", R"([{"type": "relu"}])", R"(, "loss": 3)"), "bad.json: loss"},
    {"an unknown optimizer", net("[1, 1, 4, 4]", R"([{"type": "relu"}])", R"(, "optimizer": {"type": "lbfgs"})"),
     "bad.json: optimizer.type"},
    {"lr as a string", net("[1, 1, 4, 4]", R"([{"type": "relu"}])", R"(, "optimizer": {"type": "sgd", "lr": "0.1"})"),
     "bad.json: optimizer.lr"},
    {"lr beyond double", net("[1, 1, 4, 4]", R"([{"type": "relu"}])", R"(, "optimizer": {"type": "sgd", "lr": 1e400})"),
     "bad.json: optimizer.lr"},
    {"lr given twice",
     net("[1, 1, 4, 4]", R"([{"type": "relu"}])", R"(, "optimizer": {"type": "sgd", "lr": 0.1, "lr": 1000})"),
     "bad.json: optimizer.lr"},
    {"an unknown optimizer key",
     net("[1, 1, 4, 4]", R"([{"type": "relu"}])", R"(, "optimizer": {"type": "sgd", "learning_rate": 0.1})"),
     "bad.json: optimizer.learning_rate"},
    // Layers
    {"a layer without a type", one(R"({"name": "a"})"), "bad.json: layers[0].type"},
    {"an unknown layer type", one(R"({"type": "conv4d"})"), "bad.json: layers[0].type"},
    {"a layer type that is a number", one(R"({"type": 3})"), "bad.json: layers[0].type"},
    {"an unknown layer key", one(R"({"type": "relu", "slope": 0.1})"), "bad.json: layers[0].slope"},
    {"a layer key given twice", one(R"({"type": "relu", "type": "tanh"})"), "bad.json: layers[0].type"},
    {"conv without in_channels", one(R"({"type": "conv3d", "out_channels": 2, "kernel_size": 3})"),
     "bad.json: layers[0].in_channels"},
    {"conv in_channels that do not match", one(R"({"type": "conv3d", "in_channels": 3, "out_channels": 2,
                                                   "kernel_size": 3})"),
     "bad.json: layers[0].in_channels"},
    {"zero out_channels", one(R"({"type": "conv3d", "in_channels": 4, "out_channels": 0, "kernel_size": 3})"),
     "bad.json: layers[0].out_channels"},
    {"out_channels of 2^62", one(R"({"type": "conv3d", "in_channels": 4, "out_channels": 4611686018427387904,
                                    "kernel_size": 3})"),
     "bad.json: layers[0].out_channels"},
    {"a kernel list of the wrong length", one("{" + kConv3 + R"(, "kernel_size": [3, 3]})"),
     "bad.json: layers[0].kernel_size"},
    {"a zero kernel", one("{" + kConv3 + R"(, "kernel_size": 0})"), "bad.json: layers[0].kernel_size"},
    {"a kernel beyond 2^31", one("{" + kConv3 + R"(, "kernel_size": [1, 1, 3000000000]})"),
     "bad.json: layers[0].kernel_size[2]"},
    {"a kernel larger than the input", one("{" + kConv3 + R"(, "kernel_size": 9})"), "bad.json: layers[0]"},
    // Found by fuzz_network (a long run): the weight's receptive field overflowed int64 before the
    // shape limits were checked.
    {"a transposed kernel whose receptive field overflows",
     one(R"({"type": "conv_transpose3d", "in_channels": 4, "out_channels": 4, "kernel_size": 2666666})"),
     "bad.json: layers[0]: the output"},
    {"a zero stride", one("{" + kConv3 + R"(, "kernel_size": 3, "stride": 0})"), "bad.json: layers[0].stride"},
    {"a negative padding", one("{" + kConv3 + R"(, "kernel_size": 3, "padding": -1})"), "bad.json: layers[0].padding"},
    {"a zero dilation", one("{" + kConv3 + R"(, "kernel_size": 3, "dilation": 0})"), "bad.json: layers[0].dilation"},
    {"output_padding on a plain conv", one("{" + kConv3 + R"(, "kernel_size": 3, "output_padding": 1})"),
     "bad.json: layers[0].output_padding"},
    {"bias as a number", one("{" + kConv3 + R"(, "kernel_size": 3, "bias": 1})"), "bad.json: layers[0].bias"},
    {"a 2-D conv on a 5-D input", one(R"({"type": "conv2d", "in_channels": 4, "out_channels": 2, "kernel_size": 3})"),
     "bad.json: layers[0]"},
    {"an output of more than 2^40 elements",
     one(R"({"type": "conv_transpose3d", "in_channels": 4, "out_channels": 2, "kernel_size": 3, "stride": 65536})"),
     "bad.json: layers[0]"},
    {"a pool kernel larger than the input", one(R"({"type": "max_pool3d", "kernel_size": 20})"), "bad.json: layers[0]"},
    {"a pool without a kernel", one(R"({"type": "max_pool3d"})"), "bad.json: layers[0].kernel_size"},
    // Found by a hostile probe: the volume overflowed int64, and an average pool divided by it.
    {"a pool window beyond 2^31 elements",
     one(R"({"type": "avg_pool3d", "kernel_size": [1291, 1290, 1290], "padding": 645})"),
     "bad.json: layers[0].kernel_size: the window holds more than 2^31 - 1 elements"},
    {"a pool window beyond 2^63 elements", one(R"({"type": "max_pool3d", "kernel_size": 2097153, "padding": 1048576})"),
     "bad.json: layers[0].kernel_size: the window holds more than 2^31 - 1 elements"},
    {"leaky_relu slope as a string", one(R"({"type": "leaky_relu", "negative_slope": "0.1"})"),
     "bad.json: layers[0].negative_slope"},
    {"a slope beyond double", one(R"({"type": "leaky_relu", "negative_slope": -1e999})"),
     "bad.json: layers[0].negative_slope"},
    {"a slope beyond float", one(R"({"type": "leaky_relu", "negative_slope": 1e300})"),
     "bad.json: layers[0].negative_slope: must be within float's range"},
    {"a smooth_l1 beta beyond float",
     net("[2, 4, 8, 8, 8]", R"([{"type": "relu"}])", R"(, "loss": {"type": "smooth_l1", "beta": 1e39})"),
     "bad.json: loss.beta: must be within float's range"},
    // Every number is computed with in float: a non-zero one that float makes 0 is not what the file says.
    {"a smooth_l1 beta below float",
     net("[2, 4, 8, 8, 8]", R"([{"type": "relu"}])", R"(, "loss": {"type": "smooth_l1", "beta": 1e-310})"),
     "bad.json: loss.beta: is below float's range and would be 0, got 1e-310"},
    {"a slope below float", one(R"({"type": "leaky_relu", "negative_slope": -1e-320})"),
     "bad.json: layers[0].negative_slope: is below float's range and would be 0"},
    {"add of one input", net("[2, 4, 8, 8, 8]", R"([{"type": "relu", "name": "a"}, {"type": "add", "inputs": ["a"]}])"),
     "bad.json: layers[1]"},
    {"add of two shapes", net("[2, 4, 8, 8, 8]", R"([{"type": "max_pool3d", "name": "p", "kernel_size": 2},
                                 {"type": "add", "inputs": ["p", "input"]}])"),
     "bad.json: layers[1]"},
    // Names and inputs
    {"a layer named input", one(R"({"type": "relu", "name": "input"})"), "bad.json: layers[0].name"},
    {"an empty name", one(R"({"type": "relu", "name": ""})"), "bad.json: layers[0].name"},
    {"an empty network name", R"({"name": "", "input": [2, 4, 8, 8, 8], "layers": [{"type": "relu"}]})",
     "bad.json: name: must not be empty"},
    {"a name with a newline", one(R"({"type": "relu", "name": "a\nb"})"), "bad.json: layers[0].name"},
    {"a name with a plus", one(R"({"type": "relu", "name": "a+b"})"), "bad.json: layers[0].name"},
    {"a name ending in a dot", one(R"({"type": "relu", "name": "a."})"), "bad.json: layers[0].name"},
    {"two layers of one name",
     net("[2, 4, 8, 8, 8]", R"([{"type": "relu", "name": "a"}, {"type": "relu", "name": "a"}])"),
     "bad.json: layers[1].name"},
    {"an input nobody produces", one(R"({"type": "relu", "inputs": ["ghost"]})"), "bad.json: layers[0].inputs[0]"},
    {"inputs as a string", one(R"({"type": "relu", "inputs": "input"})"), "bad.json: layers[0].inputs"},
    {"an empty inputs list", one(R"({"type": "relu", "inputs": []})"), "bad.json: layers[0].inputs"},
    {"a cycle", net("[2, 4, 8, 8, 8]", R"([{"type": "relu", "name": "a", "inputs": ["b"]},
                                           {"type": "relu", "name": "b", "inputs": ["a"]}])"),
     "bad.json: layers"},
    {"a dangling branch",
     net("[2, 4, 8, 8, 8]", R"([{"type": "relu", "name": "a"}, {"type": "tanh", "inputs": ["input"]}])"),
     "bad.json: layers"},
};

TEST(MalformedNetworks, EveryOneIsRefusedWithItsPathInOneLine) {
  ASSERT_GE(kMalformed.size(), 60u);
  for (const Malformed& m : kMalformed) {
    SCOPED_TRACE(m.what);
    try {
      anvil::Network::parse(m.json, "bad.json");
      ADD_FAILURE() << "accepted";
    } catch (const anvil::InputError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(m.prefix, 0), 0u) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      EXPECT_TRUE(valid_utf8(msg)) << "a file of valid UTF-8 gives a message of valid UTF-8: " << msg;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not an InputError: " << e.what();
    }
  }
}

// A long value from the file is echoed only in part: the message stays one
// line of at most Error::kMaxMessageBytes and still starts with the file,
// the place and the problem.
TEST(MalformedNetworks, LongEchoedValuesAreCut) {
  try {
    anvil::Network::parse(one(R"({"type": ")" + std::string(5000, 'r') + R"("})"), "bad.json");
    ADD_FAILURE() << "accepted";
  } catch (const anvil::InputError& e) {
    const std::string msg = e.what();
    EXPECT_LE(msg.size(), anvil::Error::kMaxMessageBytes);
    EXPECT_EQ(msg.rfind("bad.json: layers[0].type: unknown layer type 'rrr", 0), 0u) << msg;
    EXPECT_NE(msg.find("bytes left out) ..."), std::string::npos) << msg;
    EXPECT_NE(msg.find("rrr' (known: add, "), std::string::npos) << "the value's end, then the known types: " << msg;
  }
}

// Bytes of the file that are not UTF-8, echoed by the JSON parser, are written as \xHH: the
// message is valid UTF-8 (and ASCII where the file was).
TEST(MalformedNetworks, BytesThatAreNotUtf8AreEscapedInTheMessage) {
  try {
    anvil::Network::parse("{\"\xff\xfe", "bad.json");
    ADD_FAILURE() << "accepted";
  } catch (const anvil::InputError& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(std::all_of(msg.begin(), msg.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
        << msg;
    EXPECT_NE(msg.find("\\xff"), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind("bad.json: invalid JSON: ", 0), 0u) << msg;
  }
}

// The message loses its middle, not its end: a reason that follows a long name stays.
TEST(MalformedNetworks, ACutKeepsTheReasonAfterALongName) {
  const std::string path = "/tmp/" + std::string(5000, 'd') + "/c.safetensors";
  const std::string msg = anvil::Error(path + ": cannot write: File name too long").what();
  EXPECT_LE(msg.size(), anvil::Error::kMaxMessageBytes);
  EXPECT_EQ(msg.rfind("/tmp/ddd", 0), 0u) << msg;
  const std::string end = "ddd/c.safetensors: cannot write: File name too long";
  EXPECT_EQ(msg.substr(msg.size() - end.size()), end) << msg;
}

// Splits a cut message into the start it kept, the count its note gives and the end it kept.
struct Cut {
  std::string head, tail;
  size_t left_out = 0;
};
Cut split(const std::string& cut) {
  const size_t open = cut.find("... (");
  const size_t close = cut.find(" bytes left out) ...", open);
  EXPECT_NE(close, std::string::npos) << cut;
  return {cut.substr(0, open), cut.substr(close + 20), size_t(std::stoull(cut.substr(open + 5, close - open - 5)))};
}

// The cut keeps whole UTF-8 characters at both sides and says how many bytes it
// left out; a message within the limit is kept whole, and cutting again changes nothing.
TEST(MalformedNetworks, MessagesAreCutAtWholeCharacters) {
  std::string text = "x";
  for (int i = 0; i < 1000; ++i) text += "\xc3\xa9";  // e acute, 2 bytes
  const std::string cut = anvil::Error::one_line(text);
  EXPECT_LE(cut.size(), anvil::Error::kMaxMessageBytes);
  const Cut parts = split(cut);
  EXPECT_EQ(parts.head.size() % 2, 1u) << "x, then whole 2-byte characters";
  EXPECT_EQ(parts.tail.size() % 2, 0u) << "whole 2-byte characters";
  EXPECT_GT(parts.tail.size(), 0u);
  EXPECT_EQ(text.compare(0, parts.head.size(), parts.head), 0);
  EXPECT_EQ(text.compare(text.size() - parts.tail.size(), parts.tail.size(), parts.tail), 0);
  EXPECT_EQ(parts.left_out, text.size() - parts.head.size() - parts.tail.size());
  EXPECT_EQ(anvil::Error::one_line(cut), cut);
  const std::string at_limit(anvil::Error::kMaxMessageBytes, 'a');
  EXPECT_EQ(anvil::Error::one_line(at_limit), at_limit);
  // Bytes that are not UTF-8 (continuation bytes only) still keep most of the message's first part.
  const std::string stray = anvil::Error::one_line(std::string(2000, '\x80'));
  EXPECT_LE(stray.size(), anvil::Error::kMaxMessageBytes);
  EXPECT_GE(stray.find("... ("), (anvil::Error::kMaxMessageBytes - 48) * 2 / 3 - 3);
}

// Unicode's line separators (U+0085, U+2028, U+2029) are escaped byte by byte, as control
// bytes are; other characters, U+2027 beside them included, stay as they are. A cut among them
// keeps whole characters and counts the text's own bytes.
TEST(MalformedNetworks, LineSeparatorsAreEscaped) {
  const std::string text =
      "a\xc2\x85"
      "b\xe2\x80\xa8"
      "c\xe2\x80\xa9"
      "d\xc3\xa9\xe2\x80\xa7\xc2\x84";
  EXPECT_EQ(anvil::Error::one_line(text), "a\\xc2\\x85b\\xe2\\x80\\xa8c\\xe2\\x80\\xa9d\xc3\xa9\xe2\x80\xa7\xc2\x84");
  std::string many = "x";
  for (int i = 0; i < 300; ++i) many += "\xe2\x80\xa8";  // each written as 12 characters
  const std::string cut = anvil::Error::one_line(many);
  EXPECT_LE(cut.size(), anvil::Error::kMaxMessageBytes);
  const Cut parts = split(cut);
  EXPECT_EQ((parts.head.size() - 1) % 12, 0u) << parts.head.substr(parts.head.size() - 12);
  EXPECT_EQ(parts.tail.size() % 12, 0u) << parts.tail.substr(0, 12);
  EXPECT_EQ(parts.left_out, many.size() - 1 - (parts.head.size() - 1) / 4 - parts.tail.size() / 4);
  EXPECT_EQ(cut.find('\xe2'), std::string::npos) << "no separator is left raw";
}

// Control bytes near the cut: no escape is split, and the note counts the
// text's own bytes, not those of their escapes.
TEST(MalformedNetworks, TheCutKeepsWholeEscapes) {
  for (size_t lead = 0; lead < 4; ++lead) {
    const std::string text = std::string(lead, 'a') + std::string(600, '\x1f');  // each written as \x1f
    const std::string cut = anvil::Error::one_line(text);
    SCOPED_TRACE(lead);
    EXPECT_LE(cut.size(), anvil::Error::kMaxMessageBytes);
    const Cut parts = split(cut);
    ASSERT_GE(parts.head.size(), lead);
    EXPECT_EQ((parts.head.size() - lead) % 4, 0u) << "whole escapes only: " << parts.head.substr(parts.head.size() - 8);
    EXPECT_EQ(parts.tail.size() % 4, 0u) << "whole escapes only: " << parts.tail.substr(0, 8);
    // The bytes of the text that the message keeps.
    const size_t written = lead + (parts.head.size() - lead) / 4 + parts.tail.size() / 4;
    EXPECT_EQ(parts.left_out, text.size() - written);
  }
}

}  // namespace
