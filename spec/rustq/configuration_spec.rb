# frozen_string_literal: true

RSpec.describe "Rustq.configure" do
  include_context "restores Rustq.config"

  it "sets the default queue and default job options (in Sidekiq's key order)" do
    Rustq.configure do |config|
      config.default_queue = "low"
      config.default_job_options = {backtrace: 5}
    end
    Rustq::Client.push("class" => "A", "args" => [])

    payload = queue_payloads("low").first
    expect(payload.keys.first(5)).to eq(%w[retry queue backtrace class args])
    expect(payload["backtrace"]).to eq(5)
  end

  it "wire version 8 writes Integer epoch milliseconds" do
    Rustq.configure { |config| config.wire_version = 8 }
    Rustq::Client.push("class" => "A", "args" => [])

    payload = queue_payloads.first
    expect(payload["created_at"]).to be_a(Integer)
    expect(payload["created_at"]).to be_within(5_000).of((Time.now.to_f * 1000).round)
  end

  it "uses REDIS_URL when no URL is configured" do
    other = RedisServer.start
    begin
      original = ENV["REDIS_URL"]
      ENV["REDIS_URL"] = other.url
      Rustq.configure { |config| config.redis_url = nil }
      Rustq::Client.push("class" => "A", "args" => [])
      expect(Redis.new(url: other.url).llen("queue:default")).to eq(1)
      expect(redis.dbsize).to eq(0)
    ensure
      ENV["REDIS_URL"] = original
      other.stop
    end
  end

  it "an explicit URL beats REDIS_URL" do
    other = RedisServer.start
    begin
      Rustq.configure { |config| config.redis_url = other.url }
      Rustq::Client.push("class" => "A", "args" => [])
      expect(Redis.new(url: other.url).llen("queue:default")).to eq(1)
    ensure
      other.stop
    end
  end

  it "refuses bad settings at configure time" do
    expect { Rustq.configure { |c| c.wire_version = 5 } }.to raise_error(Rustq::ConfigurationError, /wire version must be 7 or 8/)
    Rustq.config.wire_version = 7
    expect { Rustq.configure { |c| c.redis_url = "http://nope" } }.to raise_error(Rustq::ConfigurationError, /http:\/\/nope/)
    Rustq.config.redis_url = nil
    expect { Rustq.configure { |c| c.redis_url = "redis+sentinel://:secret@127.0.0.1:26379" } }
      .to raise_error(Rustq::ConfigurationError, %r{redis\+sentinel://:REDACTED@127\.0\.0\.1:26379: no master name}) { |e| expect(e.message).not_to include("secret") }
    Rustq.config.redis_url = nil
    expect { Rustq.configure { |c| c.connect_timeout = -1 } }.to raise_error(Rustq::ConfigurationError, /connect_timeout/)
    Rustq.config.connect_timeout = 1
    expect { Rustq.configure { |c| c.ca_file = "/nonexistent/ca.pem" } }.to raise_error(Rustq::ConfigurationError, /CA file/)
    Rustq.config.ca_file = nil
    expect { Rustq.configure { |c| c.spin_wait = -0.001 } }.to raise_error(Rustq::ConfigurationError, /spin_wait must be a positive number/)
    expect { Rustq.configure { |c| c.spin_wait = 0.01 } }.to raise_error(Rustq::ConfigurationError, /spin_wait must be at most 0.001 seconds, not 0.01/)
  end

  it "spins for a reply by default only when Redis is on this machine" do
    native = Rustq.const_get(:Native)
    expect(Rustq.config.spin_wait).to eq(:auto)
    Rustq.configure
    expect(native.spin_wait).to eq(0.0002) # the suite's private Redis is on 127.0.0.1
    Rustq.configure { |c| c.redis_url = "redis://cache.internal:6379/1" }
    expect(native.spin_wait).to eq(0)
    Rustq.configure { |c| c.spin_wait = 0.0005 }
    expect(native.spin_wait).to eq(0.0005)
    Rustq.configure { |c| c.spin_wait = nil }
    expect(native.spin_wait).to eq(0)
  end

  it "pushes whether a push spins for the reply or not" do
    [nil, 0, 0.001, :auto].each_with_index do |spin, i|
      Rustq.configure { |c| c.spin_wait = spin }
      expect(Rustq.const_get(:Native).spin_wait).to eq(spin == :auto ? 0.0002 : spin.to_f)
      Rustq::Client.push("class" => "A", "args" => [i])
    end
    expect(queue_payloads.map { |p| p["args"] }).to eq([[0], [1], [2], [3]])
  end

  it "uses the configured logger" do
    io = StringIO.new
    Rustq.configure { |config| config.logger = Logger.new(io, level: Logger::DEBUG) }
    Rustq::Client.push("class" => "A", "args" => [])
    expect(io.string).to include("rustq: pushed 1 A job(s)")
  end
end
