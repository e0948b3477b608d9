# frozen_string_literal: true

require "open3"

# An app's Sidekiq server config that names Sentinels is carried over to rustq-worker as a
# redis+sentinel:// URL (same Sentinels, master name, password and db), for 6.x (redis-rb) and
# 7.x/8.x (redis-client) alike. Run in a child process: it reconfigures Sidekiq's Redis.
RSpec.describe "Rustq::SidekiqServer with a Sentinel config" do
  it "carries the Sentinels, master name, password and db over" do
    script = <<~RUBY
      require "sidekiq"
      require "rustq/sidekiq_server"
      server = Rustq::SidekiqServer.watch(concurrency: 2) do
        Sidekiq.configure_server do |config|
          config.redis = {url: "redis://mymaster/3", password: "p@ss",
                          sentinels: [{host: "10.0.0.1", port: 26379, password: "sp"}, {"host" => "10.0.0.2", "port" => 26380}]}
        end
      end
      puts server.redis_url
    RUBY
    out, status = Open3.capture2e("ruby", "-I", File.expand_path("../../lib", __dir__), "-e", script)
    expect(status).to be_success, out
    expect(out.lines.last.chomp).to match(%r{\Aredis\+sentinel://(default)?:p%40ss@10\.0\.0\.1:26379,10\.0\.0\.2:26380/mymaster/3\?sentinel_password=sp\z})
  end
end
