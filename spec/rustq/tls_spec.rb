# frozen_string_literal: true

require "open3"

# rediss:// with a private CA, against a local TLS-enabled redis-server.
RSpec.describe "Rustq over TLS" do
  include_context "restores Rustq.config"

  def openssl(*args, dir)
    out, status = Open3.capture2e("openssl", *args, chdir: dir)
    raise "openssl #{args.join(" ")}: #{out}" unless status.success?
  end

  it "pushes through rediss:// when given the CA, and refuses an unknown CA with a ConnectionError" do
    Dir.mktmpdir("rustq-tls-") do |dir|
      openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=rustq spec CA", dir)
      openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", dir)
      File.write(File.join(dir, "san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
      openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext", dir)
      plain, tls = RedisServer.free_port, RedisServer.free_port
      pid = Process.spawn("redis-server", "--port", plain.to_s, "--bind", "127.0.0.1", "--save", "", "--tls-port", tls.to_s,
        "--tls-cert-file", "#{dir}/server.pem", "--tls-key-file", "#{dir}/server.key", "--tls-ca-cert-file", "#{dir}/ca.pem",
        "--tls-auth-clients", "no", "--dir", dir, out: File::NULL, err: File::NULL)
      begin
        plain_redis = Redis.new(url: "redis://127.0.0.1:#{plain}/0")
        deadline = Time.now + 10
        begin
          plain_redis.ping
        rescue Redis::CannotConnectError
          raise if Time.now > deadline

          sleep 0.05
          retry
        end

        Rustq.configure do |config|
          config.redis_url = "rediss://127.0.0.1:#{tls}/0"
          config.ca_file = File.join(dir, "ca.pem")
        end
        jid = Rustq::Client.push("class" => "TlsJob", "args" => ["secret"])
        expect(JSON.parse(plain_redis.lrange("queue:default", 0, -1).first)).to include("jid" => jid, "args" => ["secret"])

        Rustq.configure { |config| config.ca_file = nil }
        expect { Rustq::Client.push("class" => "TlsJob", "args" => []) }.to raise_error(Rustq::ConnectionError, /127\.0\.0\.1:#{tls}/)
        expect(plain_redis.llen("queue:default")).to eq(1)
      ensure
        Process.kill("KILL", pid)
        Process.wait(pid)
      end
    end
  end
end
